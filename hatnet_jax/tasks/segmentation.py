"""Semantic segmentation: Semantic FPN with a HAT-Net backbone (PVT's recipe on mmseg 0.13), exact mIoU.

Loss: pixel cross-entropy against labels with the ignore index, averaged over all pixels as mmseg 0.13
does (ignored pixels count 0 in the sum but 1 in the divisor). Evaluation: the model sees each image at
its AlignResize size (`data.seg_pipeline` groups the eval split by that shape: one compile per distinct
shape, no padding of images), its logits are resized back to the original label size with torch's
bilinear rule (align_corners=False), and argmax predictions go into a [C, C] confusion matrix,
accumulated on the host in int64 over every eval image exactly once; mIoU, mAcc and aAcc follow from it
(`hatnet_jax.metrics.miou`).
"""
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from hatnet_jax import layout
from hatnet_jax import models
from hatnet_jax.metrics import miou
from hatnet_jax.tasks import base
from hatnet_jax.visualization import images as pictures


def _source_index(out_size: int, in_size, orig):
  """Per output row: (i0, i1, w1) of torch's bilinear (align_corners=False) from `in_size` to `orig`."""
  dst = jnp.arange(out_size, dtype=jnp.float32)
  scale = in_size / orig.astype(jnp.float32)
  src = jnp.maximum(scale * (dst + 0.5) - 0.5, 0.0)
  i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), in_size - 1)
  i1 = jnp.minimum(i0 + 1, in_size - 1)
  return i0, i1, src - i0.astype(jnp.float32)


def resize_to_original(logits: jax.Array, orig_size: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
  """[B, h, w, C] -> [B, *out_hw, C]: image b resized bilinearly to orig_size[b] (rows/columns beyond it
  are filler). Each image's scale is traced, so one compile serves any original size in the group."""

  def one(x, orig):
    h, w = x.shape[:2]
    i0, i1, wy = _source_index(out_hw[0], h, orig[0])
    x = x[i0] * (1 - wy)[:, None, None] + x[i1] * wy[:, None, None]
    j0, j1, wx = _source_index(out_hw[1], w, orig[1])
    return x[:, j0] * (1 - wx)[None, :, None] + x[:, j1] * wx[None, :, None]

  return jax.vmap(one)(logits.astype(jnp.float32), orig_size)


class Segmentation(base.Task):
  """config.model -> models.create(**config.model) (a 'semfpn_*' model); data from data.seg_pipeline."""

  name = 'segmentation'
  best_metric = 'mIoU'

  def validate(self):
    name = self.config.model.name
    if models.family(name)[1] is not models.SemanticFPN:
      raise ValueError(f"config.task='segmentation' needs a segmentation model (config.model.name='semfpn_...'); "
                       f'got {name!r}')

  def _info(self):
    from hatnet_jax.data.segmentation import sources as seg_sources  # pylint: disable=g-import-not-at-top
    return seg_sources.dataset_info(self.config.data)

  def dataset_facts(self):
    if getattr(self, '_facts', None) is None:  # read once: the per-class table asks at every evaluation
      info = self._info()
      self._facts = base.DatasetFacts(name=info.name, num_classes=info.num_classes, num_train=info.num_train,
                                      num_eval=info.num_eval, class_names=tuple(info.class_names))
    return self._facts

  def train_iterator(self, mesh, start_step):
    from hatnet_jax.data.segmentation import pipeline as seg_pipeline  # pylint: disable=g-import-not-at-top
    return seg_pipeline.create_train_iterator(self.config, mesh, start_step=start_step)

  def eval_iterator(self, mesh):
    from hatnet_jax.data.segmentation import pipeline as seg_pipeline  # pylint: disable=g-import-not-at-top
    return seg_pipeline.create_eval_iterator(self.config, mesh)

  def create_model(self, num_classes):
    return models.create(**self.config.model, num_classes=num_classes)

  def init_input(self):
    size = self.config.data.crop_size
    return jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)

  def train_loss(self, model, variables, batch, rng, mutable):
    logits, new_state = model.apply(variables, batch['image'], train=True, rngs={'dropout': rng},
                                    mutable=list(mutable))
    labels = batch['label']
    valid = labels != self.config.data.ignore_index
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
    loss = -jnp.sum(jnp.where(valid, picked, 0.0)) / labels.size  # mmseg 0.13: mean over all pixels
    hits = (jnp.argmax(logits, axis=-1) == labels) & valid
    accuracy = jnp.sum(hits) / jnp.maximum(jnp.sum(valid), 1)
    return loss, ({'train_loss': loss, 'train_pixel_accuracy': accuracy.astype(jnp.float32)}, dict(new_state))

  def predict(self, model, variables, batch) -> jax.Array:
    """Argmax class per pixel at the (padded) original label size: int32 [B, Hl, Wl]."""
    logits = model.apply(variables, batch['image'], train=False)
    logits = resize_to_original(logits, batch['orig_size'], batch['label'].shape[1:3])
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)

  def eval_sums(self, model, variables, batch):
    pred = self.predict(model, variables, batch)
    valid = batch['mask'][:, None, None] > 0
    cm = miou.confusion_matrix(pred, batch['label'], model.num_classes, self.config.data.ignore_index, valid)
    return {'confusion': cm, 'count': jnp.sum(batch['mask'])}

  def finalize(self, totals: Mapping[str, np.ndarray]) -> dict[str, Any]:
    out = miou.metrics_from_totals(*miou.areas_from_confusion(totals['confusion']))
    return {'mIoU': float(out['mIoU']), 'mAcc': float(out['mAcc']), 'aAcc': float(out['aAcc']),
            'IoU': np.asarray(out['IoU']), 'Acc': np.asarray(out['Acc']), 'images': float(totals['count'])}

  def describe(self, metrics):
    return (f'mIoU {100 * metrics["mIoU"]:.2f}%, mAcc {100 * metrics["mAcc"]:.2f}%, '
            f'aAcc {100 * metrics["aAcc"]:.2f}% over {int(metrics["images"])} images')

  def write_eval_summaries(self, writer, step, metrics, variables, model, mesh):
    """Per-class IoU/Acc as a Markdown table, and input | ground truth | prediction for a few images."""
    names = self.dataset_facts().class_names or tuple(str(i) for i in range(len(metrics['IoU'])))
    rows = ['| class | IoU | Acc |', '|---|---:|---:|']
    for name, iou, acc in zip(names, metrics['IoU'], metrics['Acc']):
      rows.append(f'| {name} | {100 * iou:.2f} | {100 * acc:.2f} |')
    writer.write_texts(step, {'eval_per_class': '\n'.join(rows)})
    # Also as scalars, so each class's IoU plots over training (which classes lag, and for how long).
    writer.write_scalars(step, {f'eval_class_IoU/{i:03d}_{name}': float(iou)
                                for i, (name, iou) in enumerate(zip(names, metrics['IoU']))})
    panel = self.panel_predictions(model, variables, mesh, self.predict)
    if panel is None:
      return
    batch, pred = panel
    count = self.config.log_images_count
    images = layout.local_rows(batch['image'], count)
    labels, preds = layout.local_rows(batch['label'], count), layout.local_rows(pred, count)
    sizes = layout.local_rows(batch['orig_size'], count)
    shown = pictures.segmentation_panels(images, labels, preds, sizes, self.config.data.mean, self.config.data.std,
                                        self.config.data.ignore_index)
    writer.write_images(step, {'eval_input_truth_prediction': shown})
