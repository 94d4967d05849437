"""The one place in hatnet_jax that imports TensorFlow: tf.data and TFDS run on the host CPU only.

Importing this module hides every GPU/TPU from TensorFlow, so the host pipeline never takes accelerator
memory that JAX needs. The modules that use TensorFlow (pipeline, sources, transforms, digits) import it
from here and are themselves imported only on first use (`hatnet_jax.data` stays TensorFlow-free).
"""
import tensorflow as tf
import tensorflow_datasets as tfds

try:
  tf.config.set_visible_devices([], 'GPU')
  tf.config.set_visible_devices([], 'TPU')
except (RuntimeError, ValueError):  # TensorFlow was initialised by someone else first; nothing to change
  pass

__all__ = ['tf', 'tfds']
