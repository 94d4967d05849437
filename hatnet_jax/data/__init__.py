"""Input pipelines. The shared core sits here: `sources` (random-access records: TFDS array_record, files,
memory), `stream` (the (seed, step) index stream, tf.data options, `GlobalBatches` that turns this process's
rows into global jax.Arrays), `tf_host` (tensorflow imported for the host only) and `testing` (small
synthetic datasets). One folder per task (`classification/`, `segmentation/`; `detection/` next) holds its
transforms, augmentation and iterators, and `demos/` the offline datasets built from data that ships in pip
packages (digits, digit scenes). Imports `layout` only, and tensorflow lazily: importing the package does
not import it.
"""

from hatnet_jax.data.classification import augment
from hatnet_jax.data.classification import mixup
from hatnet_jax.data.classification import randaugment


def dataset_info(data_config):
  """Cheap metadata of `config.data`'s dataset (no tf.data pipeline): a `sources.DatasetInfo`."""
  from hatnet_jax.data import sources  # pylint: disable=g-import-not-at-top
  return sources.dataset_info(data_config)


def create_train_iterator(config, mesh, start_step=0):
  """Infinite iterator of global training batches dict(image f32 [B,S,S,3], label int32 [B]).

  Deterministic in (config.seed, step): `start_step=k` continues exactly like an uninterrupted run.
  """
  from hatnet_jax.data.classification import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.create_train_iterator(config, mesh, start_step=start_step)


def create_eval_iterator(config, mesh):
  """One exact pass over the eval split: dict(image, label, mask) global batches (mask 0 = padding)."""
  from hatnet_jax.data.classification import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.create_eval_iterator(config, mesh)
