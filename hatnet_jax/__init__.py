"""HAT-Net (Vision Transformers with Hierarchical Attention) in JAX/Flax.

Folders, lowest first (each may import the ones before it, never one after it): `layout` (the device mesh
and batch sharding), `models/` (backbone, necks, heads, composed models, native CPU kernels), `data/`
(input pipelines), `metrics/`, `visualization/` (pictures for TensorBoard and the tools), `tasks/` (one
module per task: the seam between the loop and a task), `training/` (the loop and what only it uses),
`tools/` (command lines: predict, attention maps, export, convert, prepare data), `sweep/` (runs many
trainings). docs/architecture.md draws the map.

Importing the package pulls in neither tensorflow nor torch: the input pipeline imports tf.data lazily and
only the weight converter needs torch.
"""
