"""The R-CNN box head's test-time post-processing with static shapes: mmdetection 3.3.0's
BBoxHead._predict_by_feat_single + multiclass_nms, for one image.

mmdet: softmax over the num_classes + 1 logits (background last), every RoI decoded once per class with
its class's deltas (DeltaXYWH, stds (0.1, 0.1, 0.2, 0.2)) and clipped to the image shape; every (RoI,
class) pair with score > score_thr (RoI-major, class-minor order) goes to class-wise NMS (mmcv
batched_nms, IoU 0.5); the first max_per_img kept by descending score. Ties: as structures/nms.py, in
(RoI, class) index order.

Frame: boxes stay in the canvas frame (mmdet's img_shape), as mmdet's Mask R-CNN predicts them
(StandardRoIHead passes rescale=False to the box head when a mask head follows, so NMS runs there, and the
mask head rescales). Mapping to the original image is the caller's: divide x by the resize factor sx and
y by sy (`boxes.scale(boxes, 1 / (sy, sx))`, mmdet's times 1 / scale_factor).

Static shapes: 1000 RoIs x 80 classes are 80,000 pairs, too many to sort and sweep per kept box. The top
`max_candidates` pairs above score_thr (by score, ties by index) go to the fixed-size NMS; the rest are
cut, and their number is returned (`overflow`), so a caller can report it. With no pair cut the result is
mmdet's. Default MAX_CANDIDATES = 4096. Cost: top_k over the R x K pairs, then a stable sort of
max_candidates keys and at most max_per_img sweeps of max_candidates IoUs, linear in it: on a 2-core CPU
(jitted, 80 classes) top_k + NMS took ~2.6 / 6 / 13 / 28 / 55 ms at 1024 / 2048 / 4096 / 8192 / 16384
candidates and ~200 ms with all 80,000 pairs. A softmax row puts > 0.05 on at most 19 classes and a
confident one on one or two, so 4096 allows ~4 pairs per RoI on average for 1000 RoIs; a near-uniform
early model (each of 81 classes ~ 1/81 < 0.05) puts almost none above score_thr. Not measured on a trained
model: the overflow count says when an image needs more.
"""
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from hatnet_jax.structures import boxes as box_ops
from hatnet_jax.structures import coder
from hatnet_jax.structures import nms as nms_lib
from hatnet_jax.structures.roi_targets import RCNN_STDS

MAX_CANDIDATES = 4096


def roi_postprocess(rois: jax.Array, roi_valid: jax.Array, cls_logits: jax.Array, box_deltas: jax.Array,
                    image_hw: jax.Array, score_thr: float = 0.05, iou_threshold: float = 0.5,
                    max_per_img: int = 100, max_candidates: int = MAX_CANDIDATES,
                    stds: Sequence[float] = RCNN_STDS) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
  """Detections of ONE image (vmap for a batch) from the box head's outputs on its RoIs.

  Args:
    rois: [R, 4] the proposals the head saw (canvas frame); roi_valid: [R] bool (padding rows False).
    cls_logits: [R, num_classes + 1] (background last); box_deltas: [R, num_classes * 4] class-specific.
    image_hw: [2] (h, w) of the resized image before padding (mmdet's img_shape): boxes are clipped to it.
    score_thr, iou_threshold, max_per_img: mmdet's rcnn test_cfg (static).
    max_candidates: how many (RoI, class) pairs above score_thr the NMS sees (static).
  Returns:
    (boxes [max_per_img, 4] float32 canvas xyxy, scores [max_per_img], labels [max_per_img] int32,
    valid [max_per_img] bool, overflow int32 scalar: pairs above score_thr left out by max_candidates).
    Rows in descending score order; invalid rows are zeros.
  """
  rois = box_ops.as_boxes('rois', rois)
  roi_valid = jnp.asarray(roi_valid).astype(bool)
  cls_logits, box_deltas = jnp.asarray(cls_logits), jnp.asarray(box_deltas)
  r = rois.shape[0]
  if rois.ndim != 2 or roi_valid.shape != (r,) or cls_logits.ndim != 2 or cls_logits.shape[0] != r:
    raise ValueError(f'rois must be [R, 4], roi_valid [R] and cls_logits [R, num_classes + 1]: got {rois.shape}, '
                     f'{roi_valid.shape} and {cls_logits.shape} (one image: vmap for a batch)')
  num_classes = cls_logits.shape[1] - 1
  if num_classes < 1 or box_deltas.shape != (r, num_classes * 4):
    raise ValueError(f'box_deltas must be class-specific [R, num_classes * 4] = {(r, num_classes * 4)} for '
                     f'cls_logits {cls_logits.shape} (num_classes + 1 with background), got {box_deltas.shape}')
  if not isinstance(max_candidates, int) or max_candidates < 1 or not isinstance(max_per_img, int) or max_per_img < 1:
    raise ValueError(f'max_candidates and max_per_img must be static ints >= 1, got {max_candidates!r} and '
                     f'{max_per_img!r}')
  image_hw = jnp.asarray(image_hw, jnp.float32)
  if image_hw.shape != (2,):
    raise ValueError(f'image_hw must be (h, w) of one image, shape [2], got {image_hw.shape} (vmap for a batch)')

  if r == 0:  # no RoI (static): nothing to gather from
    return (jnp.zeros((max_per_img, 4), jnp.float32), jnp.zeros((max_per_img,), jnp.float32),
            jnp.zeros((max_per_img,), jnp.int32), jnp.zeros((max_per_img,), bool), jnp.int32(0))
  scores = jax.nn.softmax(cls_logits.astype(jnp.float32), axis=-1)[:, :num_classes]
  above = roi_valid[:, None] & (scores > score_thr)
  flat = jnp.where(above, scores, -jnp.inf).reshape(-1)  # RoI-major, class-minor: mmdet's pair order
  k = min(max_candidates, flat.shape[0])
  top, pair = lax.top_k(flat, k)  # descending; ties: lower pair index first
  overflow = jnp.maximum(jnp.sum(above, dtype=jnp.int32) - k, 0)
  roi, label = pair // num_classes, (pair % num_classes).astype(jnp.int32)
  deltas = box_deltas.astype(jnp.float32).reshape(r, num_classes, 4)[roi, label]
  boxes = coder.decode(rois[roi], deltas, stds=stds, max_shape=image_hw)
  index, kept = nms_lib.batched_nms(boxes, top, label, iou_threshold, max_per_img, valid=top > -jnp.inf)
  return (jnp.where(kept[:, None], boxes[index], 0.0), jnp.where(kept, top[index], 0.0),
          jnp.where(kept, label[index], 0), kept, overflow)
