"""The classification input pipeline (ImageNet, image folders, digits) with the PVT/DeiT recipe: host decode
and RandomResizedCrop (`transforms`, `pipeline`), the crop's resize on the device (`crop_resize`), flip,
RandAugment, random erasing (`augment`, `randaugment`) and mixup/cutmix (`mixup`), exact evaluation.
Imports `data`'s core and `layout`.

Importing this package does not import tensorflow: `mixup` and `augment` are pure JAX, and the tf.data /
TFDS modules import tensorflow inside their functions. The entry points below load `pipeline` on first call.

    info = data.dataset_info(config.data)          # name, num_classes, num_train, num_eval, ...
    train_it = data.create_train_iterator(config, mesh, start_step=0)
    eval_it = data.create_eval_iterator(config, mesh)
    images, targets = data.mixup.mix_batch(rng, images, labels, num_classes=..., ...)
"""
from hatnet_jax.data.classification import augment
from hatnet_jax.data.classification import mixup
from hatnet_jax.data.classification import randaugment


def dataset_info(data_config):
  """Cheap metadata of `config.data`'s dataset (no tf.data pipeline): a `sources.DatasetInfo`."""
  from hatnet_jax.data.classification import sources  # pylint: disable=g-import-not-at-top
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
