"""Image classification: HAT-Net with mixup/cutmix + soft-target cross-entropy; top-1/top-5 evaluation."""
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from hatnet_jax import layout
from hatnet_jax import models
from hatnet_jax.data import classification as data
from hatnet_jax.data.classification import crop_resize
from hatnet_jax.tasks import base

TOP_K = 5  # eval reports top-1 and top-k accuracy


class Classification(base.Task):
  """config.model -> models.create(**config.model); config.mixup -> data.mixup.mix_batch(**config.mixup)."""

  name = 'classification'
  best_metric = 'top1'

  def dataset_facts(self) -> base.DatasetFacts:
    info = data.dataset_info(self.config.data)
    return base.DatasetFacts(name=info.name, num_classes=info.num_classes, num_train=info.num_train,
                             num_eval=info.num_eval, class_names=tuple(info.class_names))

  def train_iterator(self, mesh, start_step):
    return data.create_train_iterator(self.config, mesh, start_step=start_step)

  def eval_iterator(self, mesh):
    return data.create_eval_iterator(self.config, mesh)

  def validate(self):
    name = self.config.model.name
    if models.family(name)[1] is not models.HATNet:
      raise ValueError(f"config.task='classification' needs a classifier (config.model.name='hatnet_...'); got "
                       f"{name!r}: use config.task='segmentation' for it")
    size = self.config.data.image_size
    if size < 1:
      raise ValueError(f'config.data.image_size={size}: give the side of the square training crop, >= 1 '
                       f'(224 for ImageNet)')
    canvas = self.config.data.get('device_resize', 0)
    if canvas and canvas < size:
      raise ValueError(f'config.data.device_resize={canvas} is smaller than config.data.image_size={size}: '
                       f'give the canvas side (>= image_size; 512 for ImageNet) or 0 to resize on the host')
    if canvas and self.config.data.interpolation not in crop_resize.INTERPOLATIONS:
      raise ValueError(f'config.data.device_resize resizes with {" or ".join(crop_resize.INTERPOLATIONS)}; '
                       f'config.data.interpolation is {self.config.data.interpolation!r}: set '
                       f'config.data.device_resize=0 to resize on the host')
    # Any size >= 1 works (maps are padded, never below 1x1); the log shows what each stage gets.
    sizes = models.stage_map_sizes(size, len(self.create_model(1).variant.dims))
    logging.info('Stage maps at image_size %d: %s.', size, ', '.join(f'{n}x{n}' for n in sizes))

  def create_model(self, num_classes):
    return models.create(**self.config.model, num_classes=num_classes)

  def init_input(self):
    size = self.config.data.image_size
    return jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)

  def prepare_train_batch(self, rng, batch, num_classes):
    images, targets = data.mixup.mix_batch(rng, batch['image'], batch['label'], num_classes=num_classes,
                                           **self.config.mixup)
    return dict(batch, image=images, target=targets)

  def train_loss(self, model, variables, batch, rng, mutable):
    del mutable  # HAT-Net has no mutable collections
    logits = model.apply(variables, batch['image'], train=True, rngs={'dropout': rng})
    loss = jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), batch['target']))
    accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == batch['label']).astype(jnp.float32))
    return loss, ({'train_loss': loss, 'train_accuracy': accuracy}, {})

  def eval_sums(self, model, variables, batch):
    labels, mask = batch['label'], batch['mask'].astype(jnp.float32)
    logits = model.apply(variables, batch['image'], train=False).astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    top1 = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    _, top_k = jax.lax.top_k(logits, min(TOP_K, logits.shape[-1]))
    topk = jnp.any(top_k == labels[:, None], axis=-1).astype(jnp.float32)
    return {'loss': jnp.sum(loss * mask), 'top1': jnp.sum(top1 * mask), f'top{TOP_K}': jnp.sum(topk * mask),
            'count': jnp.sum(mask)}

  def finalize(self, totals: Mapping[str, np.ndarray]) -> dict[str, Any]:
    count = float(totals['count'])
    return {k: float(v) / count for k, v in totals.items() if k != 'count'}

  def write_eval_summaries(self, writer, step, metrics, variables, model, mesh):
    """With config.log_attention_maps: local and global attention of a few query points of the first eval
    images (stage 1, block 0) as TensorBoard images."""
    count = self.config.get('log_attention_maps', 0)
    if not count or jax.process_index() != 0:
      return
    from hatnet_jax.visualization import attention  # pylint: disable=g-import-not-at-top
    it = self.eval_iterator(mesh)
    try:
      images = layout.local_rows(next(iter(it))['image'], int(count))
    finally:
      it.close()
    d = self.config.data
    panels = attention.attention_images(model, jax.device_get(variables), images, mean=d.mean, std=d.std)
    writer.write_images(step, {'eval_attention_maps': panels})

  def describe(self, metrics):
    return (f'top-1 {100 * metrics["top1"]:.2f}%, top-{TOP_K} {100 * metrics[f"top{TOP_K}"]:.2f}%, '
            f'loss {metrics["loss"]:.4f}')
