"""RetinaNet's test-time post-processing with static shapes, as mmdetection 3.3.0 does it.

mmdet 3.3.0 `BaseDenseHead.predict_by_feat` -> `_predict_by_feat_single` -> `_bbox_post_process` with
RetinaNet's test_cfg (nms_pre 1000, min_bbox_size 0, score_thr 0.05, nms iou 0.5, max_per_img 100),
rescale=True. Per image and level: sigmoid scores flattened over (anchor, class); those > score_thr; the
top nms_pre of them (`filter_scores_and_topk`); their anchors' deltas decoded and clipped to the resized
image; all levels concatenated; boxes mapped back to the original image (times 1 / scale); boxes with a
side <= min_bbox_size dropped; class-wise NMS (mmcv batched_nms); the first max_per_img by score.

Static shapes: each level keeps exactly min(nms_pre, H * W * A * K) candidates with a validity mask, NMS
is the fixed-size `nms.batched_nms`, the output has max_per_img rows and a `valid` mask.
"""
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from hatnet_jax.structures import coder
from hatnet_jax.structures import nms as nms_lib
from hatnet_jax.structures.exact import rounded


def _level_candidates(logits, deltas, anchors, nms_pre, score_thr):
  """One level: (scores, labels, boxes' deltas, anchors, valid), each [B, k] (or [B, k, 4]), k = the top
  min(nms_pre, H W A K) scores > score_thr in descending order, ties by (anchor, class) index as mmdet's
  sort gives them when its order is defined."""
  b, h, w, channels = logits.shape
  num_anchors = anchors.shape[0]
  if num_anchors % (h * w) or channels % (num_anchors // (h * w)):
    raise ValueError(f'a level with maps {logits.shape} has {num_anchors} anchors: need H * W * A anchors '
                     'and A * K class channels (anchors from structures.anchors.grid_anchors of the same sizes)')
  per_location = num_anchors // (h * w)
  num_classes = channels // per_location
  if deltas.shape != (b, h, w, per_location * 4):
    raise ValueError(f'box deltas must be [B, H, W, A * 4] = {(b, h, w, per_location * 4)}, got {deltas.shape}')
  scores = jax.nn.sigmoid(logits.reshape(b, -1).astype(jnp.float32))
  k = min(nms_pre, scores.shape[1])
  top, flat = lax.top_k(jnp.where(scores > score_thr, scores, -jnp.inf), k)  # ties: lower index first
  anchor_index = flat // num_classes
  level_deltas = jnp.take_along_axis(deltas.reshape(b, -1, 4).astype(jnp.float32), anchor_index[..., None], axis=1)
  return top, (flat % num_classes).astype(jnp.int32), level_deltas, jnp.asarray(anchors)[anchor_index], top > score_thr


def postprocess(cls_logits: Sequence[jax.Array], box_deltas: Sequence[jax.Array], anchors: Sequence[jax.Array],
                image_size: jax.Array, scale: jax.Array, nms_pre: int = 1000, score_thr: float = 0.05,
                iou_threshold: float = 0.5, max_per_img: int = 100, min_bbox_size: float = 0.0,
                means: Sequence[float] = (0., 0., 0., 0.), stds: Sequence[float] = (1., 1., 1., 1.)) -> dict:
  """Detections per image, in original-image pixels, from RetinaNet's per-level head outputs.

  Args:
    cls_logits: per level [B, H, W, A * K] class logits (channel a * K + k: anchor a, class k).
    box_deltas: per level [B, H, W, A * 4] DeltaXYWH deltas (coder means/stds as given).
    anchors: per level [H * W * A, 4] (structures.anchors.grid_anchors of the same feature sizes).
    image_size: [B, 2] (h, w) of the resized image before padding; decoded boxes are clipped to it.
    scale: [B, 2] (sy, sx) resize factor of each image; boxes are divided by it (times 1 / scale).
    nms_pre, score_thr, iou_threshold, max_per_img, min_bbox_size: mmdet's test_cfg (static). A
      min_bbox_size below 0 keeps every box (mmdet skips the filter then).
  Returns:
    dict(boxes [B, max_per_img, 4] float32 xyxy, scores [B, max_per_img], labels [B, max_per_img] int32,
    valid [B, max_per_img] bool), rows in descending score order; rows past an image's detections have
    valid False and zeros elsewhere. Jittable: all shapes are static.
  """
  if not len(cls_logits) == len(box_deltas) == len(anchors) or not cls_logits:
    raise ValueError(f'one class map, box map and anchor set per level: got {len(cls_logits)}, {len(box_deltas)} '
                     f'and {len(anchors)}')
  if nms_pre < 1 or max_per_img < 1:
    raise ValueError(f'nms_pre and max_per_img must be >= 1, got {nms_pre} and {max_per_img}')
  levels = [_level_candidates(c, d, a, nms_pre, score_thr) for c, d, a in zip(cls_logits, box_deltas, anchors)]
  scores, labels, deltas, level_anchors, valid = (jnp.concatenate(parts, axis=1) for parts in zip(*levels))
  image_size = jnp.asarray(image_size, jnp.float32)
  scale = jnp.asarray(scale, jnp.float32)
  batch = scores.shape[0]
  if image_size.shape != (batch, 2) or scale.shape != (batch, 2):
    raise ValueError(f'image_size and scale must be [B, 2] = [{batch}, 2], got {image_size.shape} and {scale.shape}')

  boxes = coder.decode(level_anchors, deltas, means, stds, max_shape=image_size)
  inverse = 1.0 / scale  # mmdet multiplies by 1 / scale_factor
  boxes = rounded(boxes * jnp.stack([inverse[:, 1], inverse[:, 0]] * 2, axis=-1)[:, None, :])
  if min_bbox_size >= 0:
    valid &= (boxes[..., 2] - boxes[..., 0] > min_bbox_size) & (boxes[..., 3] - boxes[..., 1] > min_bbox_size)

  def per_image(boxes, scores, labels, valid):
    index, kept = nms_lib.batched_nms(boxes, scores, labels, iou_threshold, max_per_img, valid=valid)
    return (jnp.where(kept[:, None], boxes[index], 0.0), jnp.where(kept, scores[index], 0.0),
            jnp.where(kept, labels[index], 0), kept)

  boxes, scores, labels, valid = jax.vmap(per_image)(boxes, scores, labels, valid)
  return dict(boxes=boxes, scores=scores, labels=labels, valid=valid)
