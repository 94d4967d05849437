"""Mask R-CNN's region proposals with static shapes: mmdetection 3.3.0's RPNHead.predict_by_feat for one
image (`_predict_by_feat_single` + `_bbox_post_process`, rescale=False).

Per level: sigmoid objectness of the H * W * A anchors, the top nms_pre by score (`scores.sort`), their
deltas decoded (means 0, stds 1) and clipped to the image shape; all levels concatenated; boxes with
w <= min_bbox_size or h <= min_bbox_size dropped (with min_bbox_size 0 this drops the boxes that clipping
squashed to a line: anchors wholly outside the image); NMS at iou_threshold within each level (mmcv
batched_nms with the level index as the class); the first max_per_img kept, in descending score order.
The Mask R-CNN config: nms_pre 2000 (train, `rpn_proposal`) / 1000 (test), max_per_img 1000, IoU 0.7,
min_bbox_size 0.

Order and ties: candidates are ordered level by level, within a level by descending score with ties in
anchor-index order, and NMS takes them by descending score with ties in that candidate order (a stable
sort). mmdet sorts with torch's unstable sort; this is its order whenever the scores alone define it
(with torch.sort made stable it is its order, tie for tie: tests/structures/test_proposals.py).

Static shapes: each level keeps exactly min(nms_pre, H * W * A) candidates, the NMS is the fixed-size
`nms.batched_nms`, and the output has max_per_img rows with a validity mask.
"""
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from hatnet_jax.structures import coder
from hatnet_jax.structures import nms as nms_lib

RPN_STRIDES = (4, 8, 16, 32, 64)  # mmdet's RPN anchors: scale 8, ratios (0.5, 1, 2): A = 3 per location


def _level(index, logits, deltas, anchors, valid, nms_pre):
  """One level: (scores, deltas, anchors, level ids, valid) of its top min(nms_pre, H W A) anchors."""
  if logits.ndim != 3 or deltas.shape != (*logits.shape[:2], logits.shape[2] * 4):
    raise ValueError(f'level {index}: objectness must be [H, W, A] and deltas [H, W, A * 4], got {logits.shape} '
                     f'and {deltas.shape} (one image: vmap for a batch)')
  n = logits.shape[0] * logits.shape[1] * logits.shape[2]
  anchors = jnp.asarray(anchors, jnp.float32)
  if anchors.shape != (n, 4):
    raise ValueError(f'level {index}: anchors must be [H * W * A, 4] = {(n, 4)} for objectness {logits.shape}, '
                     f'got {anchors.shape} (structures.anchors.grid_anchors of the same sizes)')
  scores = jax.nn.sigmoid(logits.reshape(n).astype(jnp.float32))
  if valid is not None:
    valid = jnp.asarray(valid)
    if valid.shape != (n,):
      raise ValueError(f'level {index}: anchor_valid must be [H * W * A] = [{n}], got {valid.shape}')
    scores = jnp.where(valid, scores, -jnp.inf)
  k = n if nms_pre <= 0 else min(nms_pre, n)  # mmdet: nms_pre <= 0 keeps every anchor
  top, order = lax.top_k(scores, k)  # descending; ties: lower index first
  level_deltas = deltas.reshape(n, 4).astype(jnp.float32)[order]
  return top, level_deltas, anchors[order], jnp.full((k,), index, jnp.int32), top > -jnp.inf


def rpn_proposals(cls_logits: Sequence[jax.Array], deltas: Sequence[jax.Array], anchors: Sequence[jax.Array],
                  image_hw: jax.Array, nms_pre: int, max_per_img: int, iou_threshold: float = 0.7,
                  min_bbox_size: float = 0.0,
                  anchor_valid: Optional[Sequence[jax.Array]] = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Proposals of ONE image (vmap for a batch) from the RPN's per-level outputs.

  Args:
    cls_logits: per level [H, W, A] objectness logits (one class, sigmoid).
    deltas: per level [H, W, A * 4] DeltaXYWH deltas (means 0, stds 1).
    anchors: per level [H * W * A, 4] (structures.anchors.grid_anchors with RPN_STRIDES,
      octave_base_scale=8, scales_per_octave=1).
    image_hw: [2] (h, w) of the resized image before padding (mmdet's img_shape): boxes are clipped to it.
    nms_pre: candidates per level (static; <= 0 keeps all); max_per_img: proposals kept (static).
    iou_threshold, min_bbox_size: the NMS IoU (static) and the side filter (a negative value skips it).
    anchor_valid: optional per level [H * W * A] bool; False anchors are never candidates. mmdet's RPN
      predict uses every anchor of the padded canvas (None, the default, is that); pass flags to leave out
      the anchors on batch padding.
  Returns:
    (boxes [max_per_img, 4] float32 xyxy in the canvas frame, scores [max_per_img] (sigmoid),
    valid [max_per_img] bool): rows in descending score order; invalid rows are zeros.
  """
  if not len(cls_logits) == len(deltas) == len(anchors) or not cls_logits:
    raise ValueError(f'one objectness map, delta map and anchor set per level: got {len(cls_logits)}, '
                     f'{len(deltas)} and {len(anchors)}')
  if anchor_valid is not None and len(anchor_valid) != len(anchors):
    raise ValueError(f'anchor_valid must hold one [H * W * A] flag array per level: got {len(anchor_valid)} '
                     f'for {len(anchors)} levels')
  if not isinstance(max_per_img, int) or max_per_img < 1 or not isinstance(nms_pre, int):
    raise ValueError(f'nms_pre and max_per_img must be static ints, max_per_img >= 1: got {nms_pre!r} and '
                     f'{max_per_img!r}')
  image_hw = jnp.asarray(image_hw, jnp.float32)
  if image_hw.shape != (2,):
    raise ValueError(f'image_hw must be (h, w) of one image, shape [2], got {image_hw.shape} (vmap for a batch)')
  flags = anchor_valid if anchor_valid is not None else [None] * len(anchors)
  levels = [_level(i, jnp.asarray(c), jnp.asarray(d), a, v, nms_pre)
            for i, (c, d, a, v) in enumerate(zip(cls_logits, deltas, anchors, flags))]
  scores, level_deltas, level_anchors, level_ids, valid = (jnp.concatenate(p) for p in zip(*levels))
  boxes = coder.decode(level_anchors, level_deltas, max_shape=image_hw)
  if min_bbox_size >= 0:
    valid &= (boxes[:, 2] - boxes[:, 0] > min_bbox_size) & (boxes[:, 3] - boxes[:, 1] > min_bbox_size)
  index, kept = nms_lib.batched_nms(boxes, scores, level_ids, iou_threshold, max_per_img, valid=valid)
  return jnp.where(kept[:, None], boxes[index], 0.0), jnp.where(kept, scores[index], 0.0), kept
