"""Instance segmentation: Mask R-CNN on a HAT-Net backbone (PVT's recipe on mmdet), COCO box and mask AP.

Data: the detection pipeline (`hatnet_jax.data.detection`) with `config.data.with_masks`: each GT's mask
bit-packed on the canvas. Train: `mask_rcnn_loss.mask_rcnn_loss` inside one `model.apply` (RPN, proposals,
sampling, RoIAlign, box and mask heads; mmdet's targets and normalisation). Eval (per image, static sizes):
RPN proposals (nms_pre 1000, NMS 0.7, 1000 kept), the box head on them, `roi_detections.roi_postprocess`
(score 0.05, class-wise NMS 0.5, top 100), the mask head on those boxes (14x14 RoIAlign), the predicted
class's 28x28 sigmoid; boxes go back to original-image pixels. On the host each batch's masks are pasted into
the original image size (`structures.mask_paste`, mmdet's GPU paste, threshold 0.5) and RLE-encoded at once
(the evaluation keeps RLEs, not 28x28 probabilities, so host memory stays small over 5,000 images); then
pycocotools' bbox and segm evaluation and a results JSON with both per evaluation.
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
from hatnet_jax.structures import mask_paste
from hatnet_jax.structures import roi_detections
from hatnet_jax.tasks import detection
from hatnet_jax.tasks import mask_rcnn_loss
from hatnet_jax.visualization import boxes as box_pictures

_AP_KEYS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')


def _predict(module, images, image_size, scale, cfg, num_classes, size_divisor):
  """Inside model.apply: fixed-size detections per image with their 28x28 mask probabilities."""
  feats = module.features(images, False)
  obj_maps, delta_maps = module.rpn(feats)
  props, prop_valid = mask_rcnn_loss.proposals(obj_maps, delta_maps, image_size, cfg, cfg.rpn_test_nms_pre,
                                               size_divisor)
  b, r = props.shape[:2]
  pooled, _ = mask_rcnn_loss.pool(feats, props, 7, cfg)
  cls_logits, deltas = module.box_head(pooled.reshape(b * r, *pooled.shape[2:]), False)

  def post(rois, valid, logits, deltas, hw):
    return roi_detections.roi_postprocess(rois, valid, logits, deltas, hw, score_thr=cfg.score_thr,
                                          iou_threshold=cfg.nms_iou, max_per_img=cfg.max_per_img,
                                          max_candidates=cfg.rcnn_max_candidates)

  out = jax.vmap(post)(props, prop_valid, cls_logits.reshape(b, r, -1), deltas.reshape(b, r, -1), image_size)
  boxes, scores, labels, valid = out[:4]
  d = boxes.shape[1]
  pooled14, _ = mask_rcnn_loss.pool(feats, boxes, 14, cfg)
  logits = module.mask_head(pooled14.reshape(b * d, *pooled14.shape[2:]))
  logits = logits.reshape(b, d, *logits.shape[1:3], num_classes)
  probs = jax.nn.sigmoid(jnp.take_along_axis(logits, jnp.maximum(labels, 0)[:, :, None, None, None],
                                             axis=-1)[..., 0].astype(jnp.float32))
  sy, sx = scale[:, 0], scale[:, 1]
  factor = jnp.stack([sx, sy, sx, sy], axis=-1)[:, None, :]
  return {'boxes': boxes / factor, 'scores': scores, 'labels': labels, 'valid': valid, 'mask_probs': probs,
          'canvas_boxes': boxes}


class InstanceSegmentation(detection.Detection):
  """config.model -> a 'maskrcnn_*' model; data from data.detection with masks; box and mask AP."""

  name = 'instance_segmentation'
  best_metric = 'segm_AP'

  def validate(self):
    name = self.config.model.name
    if models.family(name)[1] is not models.MaskRCNN:
      raise ValueError("config.task='instance_segmentation' needs a Mask R-CNN (config.model.name='maskrcnn_...'); "
                       f'got {name!r}')
    if not self.config.data.get('with_masks', False):
      raise ValueError('config.task=instance_segmentation needs the instance masks: set config.data.with_masks=True')
    cfg = self.config.detection
    if len(cfg.rpn_ratios) != self.config.model.get('num_anchors', 3):
      raise ValueError(f'config.detection.rpn_ratios has {len(cfg.rpn_ratios)} anchors per location but '
                       f'config.model.num_anchors is {self.config.model.num_anchors}')
    self._check_groups()

  def panel_iterator(self, mesh):
    from hatnet_jax.data.detection import pipeline  # pylint: disable=g-import-not-at-top
    return pipeline.create_eval_iterator(self.config, mesh, masks=True)  # the GT masks for the pictures

  def train_loss(self, model, variables, batch, rng, mutable):
    dropout_rng, sample_rng = jax.random.split(rng)
    cfg, size_divisor = self.config.detection, self.config.data.size_divisor

    def run(module, images):
      return mask_rcnn_loss.mask_rcnn_loss(module, images, batch, sample_rng, cfg, module.num_classes, size_divisor)

    (loss, metrics), new_state = model.apply(variables, batch['image'], method=run, rngs={'dropout': dropout_rng},
                                             mutable=list(mutable))
    return loss, (metrics, dict(new_state))

  def predict(self, model, variables, batch) -> dict:
    """Per image: boxes [D, 4] in original-image pixels, scores, labels, valid, mask_probs [D, 28, 28] of the
    predicted class, canvas_boxes (the boxes on the network's input, for pictures)."""
    cfg = self.config.detection

    def run(module, images):
      return _predict(module, images, batch['image_size'], batch['scale'], cfg, module.num_classes,
                      self.config.data.size_divisor)

    return model.apply(variables, batch['image'], method=run)

  def eval_outputs(self, model, variables, batch):
    out = self.predict(model, variables, batch)
    del out['canvas_boxes']
    return {'image_id': batch['image_id'], 'mask': batch['mask'], 'orig_size': batch['orig_size'], **out}

  def eval_accumulator(self):
    return accumulate.Examples(self._finalize, compact=self._encode_masks)

  @staticmethod
  def _encode_masks(rows: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A batch's 28x28 probabilities -> per image a list of RLEs at its original size (host memory: RLEs)."""
    rows = dict(rows)
    probs = rows.pop('mask_probs')
    rles = np.empty(len(probs), dtype=object)
    for i, (p, boxes, valid, hw) in enumerate(zip(probs, rows['boxes'], rows['valid'], rows['orig_size'])):
      keep = np.flatnonzero(valid)
      masks = mask_paste.paste_masks(p[keep], boxes[keep], (int(hw[0]), int(hw[1])))
      rles[i] = coco.masks_to_rle(masks)  # one per valid detection, in detection order
    rows['rles'] = rles
    return rows

  def _finalize(self, rows: Mapping[str, np.ndarray]) -> dict[str, Any]:
    self.dataset_facts()
    results = coco.detections_to_results(rows['image_id'], rows['boxes'], rows['scores'], rows['labels'],
                                         rows['valid'], self._info.category_ids, rles=rows['rles'])
    gt = self._ground_truth()
    metrics = coco.evaluate_boxes(gt, results, self._info.class_names)
    metrics.update(coco.evaluate_segm(gt, results, self._info.class_names))
    metrics['images'] = float(len(rows['image_id']))
    metrics['detections'] = results
    return metrics

  def describe(self, metrics):
    def fmt(prefix):
      return ', '.join(f'{k} {100 * metrics[prefix + k]:.1f}' if metrics[prefix + k] >= 0 else f'{k} n/a'
                       for k in _AP_KEYS)
    return f'box {fmt("")}; mask {fmt("segm_")} over {int(metrics["images"])} images'

  def write_eval_summaries(self, writer, step, metrics, variables, model, mesh):
    """Results JSON (boxes + RLEs), per-class box and mask AP, ground truth | prediction pictures with masks."""
    if jax.process_index() == 0 and self.workdir:
      coco.write_results_json(os.path.join(self.workdir, 'eval', f'detections_{step}.json'), metrics['detections'])
    names = self.dataset_facts().class_names
    box_ap = np.asarray(metrics['per_class_AP'], np.float64)
    mask_ap = np.asarray(metrics['segm_per_class_AP'], np.float64)
    show = lambda a: 'n/a' if np.isnan(a) else f'{100 * a:.1f}'  # noqa: E731
    table = ['| class | box AP | mask AP |', '|---|---:|---:|']
    table += [f'| {n} | {show(a)} | {show(m)} |' for n, a, m in zip(names, box_ap, mask_ap)]
    writer.write_texts(step, {'eval_per_class_AP': '\n'.join(table)})
    scalars = {}
    for i, (n, a, m) in enumerate(zip(names, box_ap, mask_ap)):
      if not np.isnan(a):
        scalars[f'eval_class_AP/{i:03d}_{n}'] = float(a)
      if not np.isnan(m):
        scalars[f'eval_class_segm_AP/{i:03d}_{n}'] = float(m)
    writer.write_scalars(step, scalars)
    panel = self.panel_predictions(model, variables, mesh, self.predict)
    if panel is None:
      return
    batch, pred = panel
    count = self.config.log_images_count
    pred = {k: np.asarray(layout.local_rows(v, count)) for k, v in pred.items()}
    rows = {k: np.asarray(layout.local_rows(batch[k], count))
            for k in ('image', 'boxes', 'labels', 'box_valid', 'image_size', 'masks')}
    d = self.config.data
    shown = box_pictures.detection_panels(
        rows['image'], d.mean, d.std, rows['image_size'], gt=(rows['boxes'], rows['labels'], rows['box_valid']),
        pred=(pred['canvas_boxes'], pred['labels'], pred['scores'], pred['valid']), class_names=names,
        gt_masks=np.unpackbits(rows['masks'], axis=-1, bitorder='little').astype(bool),
        pred_masks=_canvas_masks(pred, rows['image'].shape[1:3]))
    writer.write_images(step, {'eval_truth_prediction': shown})


def _canvas_masks(pred, canvas_hw) -> np.ndarray:
  """The predicted masks pasted on the network's input canvas (for pictures): bool [B, D, H, W]."""
  out = np.zeros(pred['mask_probs'].shape[:2] + tuple(canvas_hw), bool)
  for i in range(out.shape[0]):
    keep = np.flatnonzero(pred['valid'][i])
    if keep.size:
      out[i, keep] = mask_paste.paste_masks(pred['mask_probs'][i, keep], pred['canvas_boxes'][i, keep], canvas_hw)
  return out
