"""mmdetection 3.3.0's MaxIoUAssigner with static shapes: anchors to ground-truth boxes by IoU.

RetinaNet uses pos_iou_thr 0.5, neg_iou_thr 0.4, min_pos_iou 0, gt_max_assign_all True, match_low_quality
True, ignore_iof_thr -1. Padding is explicit: invalid anchors and padded GTs are masked so that the result
equals mmdet's on the valid anchors and the real GTs alone (mmdet drops invalid anchors before assigning).
"""
import numbers
from typing import Optional, Union

import jax
import jax.numpy as jnp

from hatnet_jax.structures import boxes as box_ops


def _last_true(mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """For a [G, A] mask: (whether column a has a True, the largest g with mask[g, a]) -- mmdet's loop over
  GTs in order, where a later GT overrides an earlier one."""
  g = mask.shape[0]
  return jnp.any(mask, axis=0), g - 1 - jnp.argmax(mask[::-1], axis=0)


def max_iou_assign(anchors: jax.Array, anchor_valid: jax.Array, gt_boxes: jax.Array, gt_valid: jax.Array,
                   pos_iou_thr: float, neg_iou_thr: Union[float, tuple[float, float]], min_pos_iou: float = 0.0,
                   gt_max_assign_all: bool = True, match_low_quality: bool = True,
                   gt_ignore: Optional[jax.Array] = None, ignore_iof_thr: float = -1.0) -> jax.Array:
  """assigned [A] int32 for anchors [A, 4] against gt_boxes [G, 4]: 0 negative, -1 ignored, g + 1 positive
  to gt_boxes[g] (g indexes the given, padded array).

  mmdet MaxIoUAssigner.assign, in order:
    1. every anchor starts ignored (-1);
    2. negative (0) when its max IoU over the GTs is in [0, neg_iou_thr) (or [lo, hi) for a tuple);
    3. positive to its best GT (the first on ties) when that IoU >= pos_iou_thr;
    4. match_low_quality: for each GT g in order whose best IoU over the anchors is >= min_pos_iou, the
       anchors whose IoU with g equals that best IoU (all of them if gt_max_assign_all, else the first)
       become g's, later GTs overriding earlier ones. Note mmdet's `>=`: with min_pos_iou 0 a GT that
       overlaps no anchor (e.g. a zero-area box) takes every anchor it has IoU 0 with -- filter empty GT
       boxes upstream, as mmdet's FilterAnnotations does.
  Crowd boxes: GTs flagged in `gt_ignore` are not GTs but ignore regions (mmdet's gt_instances_ignore);
  when ignore_iof_thr > 0, an anchor lying more than ignore_iof_thr inside one (IoF w.r.t. the anchor)
  gets IoU -1 with every GT, so it ends ignored unless step 4 picks it. Without real GTs every valid
  anchor is negative (mmdet returns all 0 then, crowd or not). Invalid anchors are always -1. Thresholds
  are static. One image: vmap over a batch.
  """
  anchors = box_ops.as_boxes('anchors', anchors)
  gt_boxes = box_ops.as_boxes('gt_boxes', gt_boxes)
  if anchors.ndim != 2 or gt_boxes.ndim != 2:
    raise ValueError(f'anchors must be [A, 4] and gt_boxes [G, 4] (vmap for a batch), got {anchors.shape} '
                     f'and {gt_boxes.shape}')
  anchor_valid = jnp.asarray(anchor_valid).astype(bool)
  gt_valid = jnp.asarray(gt_valid).astype(bool)
  gt_ignore = jnp.zeros_like(gt_valid) if gt_ignore is None else jnp.asarray(gt_ignore).astype(bool)
  if anchor_valid.shape != anchors.shape[:1] or gt_valid.shape != gt_boxes.shape[:1] or \
      gt_ignore.shape != gt_valid.shape:
    raise ValueError(f'anchor_valid must be [A], gt_valid and gt_ignore [G]; got {anchor_valid.shape}, '
                     f'{gt_valid.shape}, {gt_ignore.shape} for A={anchors.shape[0]}, G={gt_boxes.shape[0]}')
  lo, hi = (0.0, neg_iou_thr) if isinstance(neg_iou_thr, numbers.Real) else tuple(neg_iou_thr)
  if gt_boxes.shape[0] == 0:
    return jnp.where(anchor_valid, 0, -1).astype(jnp.int32)

  is_gt = gt_valid & ~gt_ignore
  overlaps = box_ops.pairwise_iou(gt_boxes, anchors)  # [G, A], gt first as mmdet
  if ignore_iof_thr > 0:
    iof = box_ops.pairwise_iof(anchors, gt_boxes)  # [A, G] (ignore_wrt_candidates=True)
    crowd = jnp.max(jnp.where((gt_valid & gt_ignore)[None, :], iof, -jnp.inf), axis=1)
    overlaps = jnp.where((crowd > ignore_iof_thr)[None, :], -1.0, overlaps)
  # Padded / crowd rows and invalid columns are absent: -inf never wins a max nor equals a real maximum.
  overlaps = jnp.where(is_gt[:, None] & anchor_valid[None, :], overlaps, -jnp.inf)

  max_overlaps = jnp.max(overlaps, axis=0)
  argmax_overlaps = jnp.argmax(overlaps, axis=0)
  assigned = jnp.where((max_overlaps >= lo) & (max_overlaps < hi), 0, -1)
  assigned = jnp.where(max_overlaps >= pos_iou_thr, argmax_overlaps + 1, assigned)
  if match_low_quality:
    gt_max = jnp.max(overlaps, axis=1)
    eligible = is_gt & (gt_max >= min_pos_iou)
    if gt_max_assign_all:
      match = eligible[:, None] & (overlaps == gt_max[:, None])
    else:
      first = jnp.argmax(overlaps, axis=1)
      match = eligible[:, None] & (jnp.arange(anchors.shape[0])[None, :] == first[:, None])
    hit, g = _last_true(match)
    assigned = jnp.where(hit, g + 1, assigned)
  assigned = jnp.where(jnp.any(is_gt), assigned, 0)
  return jnp.where(anchor_valid, assigned, -1).astype(jnp.int32)
