"""HAT-Net (Vision Transformers with Hierarchical Attention) in JAX/Flax.

Importing the package pulls in neither tensorflow nor torch: the input pipeline (hatnet_jax.data) imports
tf.data lazily and only the weight converter needs torch.
"""
