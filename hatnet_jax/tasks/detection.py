"""Object detection: RetinaNet on a HAT-Net backbone (PVT's recipe on mmdet), COCO box AP.

Train: images resized to fit `data.scale` keeping the ratio, flipped, normalised and padded into a fixed canvas
(`hatnet_jax.data.detection.pipeline`), boxes padded to `data.max_boxes` with a validity mask; the loss is
`detection_loss.retinanet_loss` (mmdet's targets, focal + L1, normalised per group of images as mmdet per GPU).
Eval: the same resize without flip; `structures.dense_detections.postprocess` keeps per level the top
`nms_pre` scores above `score_thr`, decodes them, runs class-wise NMS and keeps `max_per_img`, with boxes
mapped back to the original image; every image's detections come to the host (`accumulate.Examples`, each
eval image exactly once, on any number of devices and processes) and go through the official COCO evaluation
(`metrics.coco`, pycocotools) against the split's ground truth. Each evaluation also writes the detections
as a COCO results JSON (`<workdir>/eval/detections_<step>.json`, what the COCO evaluation server accepts).
"""
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from hatnet_jax import layout
from hatnet_jax import models
from hatnet_jax.metrics import accumulate
from hatnet_jax.metrics import coco
from hatnet_jax.structures import dense_detections
from hatnet_jax.tasks import base
from hatnet_jax.tasks import detection_loss
from hatnet_jax.visualization import boxes as box_pictures

_AP_KEYS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')


class Detection(base.Task):
  """config.model -> models.create(**config.model) (a 'retinanet_*' model); data from data.detection."""

  name = 'detection'
  best_metric = 'AP'

  def validate(self):
    name = self.config.model.name
    if models.family(name)[1] is not models.RetinaNet:
      raise ValueError(f"config.task='detection' needs a detection model (config.model.name='retinanet_...'); "
                       f'got {name!r}')
    cfg = self.config.detection
    anchors_per_location = len(cfg.ratios) * cfg.scales_per_octave
    if anchors_per_location != self.config.model.get('num_anchors', 9):
      raise ValueError(f'config.detection has {anchors_per_location} anchors per location (ratios x '
                       f'scales_per_octave) but config.model.num_anchors is {self.config.model.num_anchors}')
    self._check_groups()

  def _check_groups(self):
    """The loss is normalised per group of images (mmdet per GPU): the group size must divide the batch."""
    group = self.config.detection.images_per_group
    if self.config.batch_size % group:
      raise ValueError(f'config.detection.images_per_group={group} must divide '
                       f'config.batch_size={self.config.batch_size}')

  def _sources(self):
    from hatnet_jax.data.detection import sources  # pylint: disable=g-import-not-at-top
    return sources

  def dataset_facts(self):
    if getattr(self, '_facts', None) is None:
      info = self._sources().dataset_info(self.config.data)
      self._info = info
      self._facts = base.DatasetFacts(name=info.name, num_classes=info.num_classes, num_train=info.num_train,
                                      num_eval=info.num_eval, class_names=tuple(info.class_names))
    return self._facts

  def train_iterator(self, mesh, start_step):
    from hatnet_jax.data.detection import pipeline  # pylint: disable=g-import-not-at-top
    return pipeline.create_train_iterator(self.config, mesh, start_step=start_step)

  def eval_iterator(self, mesh):
    from hatnet_jax.data.detection import pipeline  # pylint: disable=g-import-not-at-top
    return pipeline.create_eval_iterator(self.config, mesh)

  def create_model(self, num_classes):
    return models.create(**self.config.model, num_classes=num_classes)

  def init_input(self):
    return jax.ShapeDtypeStruct((1, 128, 128, 3), jnp.float32)  # no parameter depends on the input size

  def train_loss(self, model, variables, batch, rng, mutable):
    (cls_maps, box_maps), new_state = model.apply(variables, batch['image'], train=True, rngs={'dropout': rng},
                                                  mutable=list(mutable))
    loss, metrics = detection_loss.retinanet_loss(cls_maps, box_maps, batch, self.config.detection,
                                                  model.num_classes, self.config.data.size_divisor)
    return loss, (metrics, dict(new_state))

  def predict(self, model, variables, batch) -> dict:
    """Fixed-size detections per image in original-image pixels: boxes [B, D, 4], scores, labels, valid."""
    cls_maps, box_maps = model.apply(variables, batch['image'], train=False)
    cfg = self.config.detection
    anchors = detection_loss.level_anchors(cls_maps, cfg)
    return dense_detections.postprocess(cls_maps, box_maps, anchors, batch['image_size'], batch['scale'],
                                        nms_pre=cfg.nms_pre, score_thr=cfg.score_thr,
                                        iou_threshold=cfg.nms_iou, max_per_img=cfg.max_per_img)

  def eval_outputs(self, model, variables, batch):
    out = self.predict(model, variables, batch)
    return {'image_id': batch['image_id'], 'mask': batch['mask'], **out}

  def eval_accumulator(self):
    return accumulate.Examples(self._finalize)

  def _ground_truth(self):
    if getattr(self, '_gt', None) is None:
      self.dataset_facts()
      d = self.config.data
      records = self._sources().ground_truth(d, self._info.eval_split)
      self._gt = coco.ground_truth_coco(records, self._info.category_ids, self._info.class_names)
    return self._gt

  def _finalize(self, rows: Mapping[str, np.ndarray]) -> dict[str, Any]:
    self.dataset_facts()
    results = coco.detections_to_results(rows['image_id'], rows['boxes'], rows['scores'], rows['labels'],
                                         rows['valid'], self._info.category_ids)
    metrics = coco.evaluate_boxes(self._ground_truth(), results, self._info.class_names)
    metrics['images'] = float(len(rows['image_id']))
    metrics['detections'] = results  # written as JSON by write_eval_summaries (not a scalar: not logged)
    return metrics

  def describe(self, metrics):
    # COCOeval's -1: no ground truth in that area range (e.g. no large digit in the demo).
    ap = ', '.join(f'{k} {100 * metrics[k]:.1f}' if metrics[k] >= 0 else f'{k} n/a' for k in _AP_KEYS)
    return f'box {ap} over {int(metrics["images"])} images'

  def write_eval_summaries(self, writer, step, metrics, variables, model, mesh):
    """COCO results JSON, per-class AP (table and scalars), ground truth | prediction pictures."""
    if jax.process_index() == 0 and self.workdir:
      coco.write_results_json(os.path.join(self.workdir, 'eval', f'detections_{step}.json'), metrics['detections'])
    names = self.dataset_facts().class_names
    per_class = np.asarray(metrics['per_class_AP'], np.float64)
    rows = ['| class | AP |', '|---|---:|']
    rows += [f'| {n} | {"n/a" if np.isnan(a) else f"{100 * a:.1f}"} |' for n, a in zip(names, per_class)]
    writer.write_texts(step, {'eval_per_class_AP': '\n'.join(rows)})
    writer.write_scalars(step, {f'eval_class_AP/{i:03d}_{n}': float(a)
                                for i, (n, a) in enumerate(zip(names, per_class)) if not np.isnan(a)})
    panel = self.panel_predictions(model, variables, mesh, self.predict)
    if panel is None:
      return
    batch, pred = panel
    count = self.config.log_images_count
    pred = {k: np.asarray(layout.local_rows(v, count)) for k, v in pred.items()}
    rows = {k: np.asarray(layout.local_rows(batch[k], count))
            for k in ('image', 'boxes', 'labels', 'box_valid', 'image_size', 'scale')}
    # Predictions are in original-image pixels; the panel shows the network's input: scale them back.
    scale = np.asarray(rows['scale'], np.float32)
    pred_boxes = pred['boxes'] * np.concatenate([scale[:, ::-1], scale[:, ::-1]], axis=1)[:, None, :]
    d = self.config.data
    shown = box_pictures.detection_panels(
        rows['image'], d.mean, d.std, rows['image_size'], gt=(rows['boxes'], rows['labels'], rows['box_valid']),
        pred=(pred_boxes, pred['labels'], pred['scores'], pred['valid']), class_names=names)
    writer.write_images(step, {'eval_truth_prediction': shown})
