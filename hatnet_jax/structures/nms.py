"""Greedy non-maximum suppression with static shapes: torchvision.ops.nms / batched_nms decision for
decision, jittable and vmap-able.

Algorithm (sound on CPU, GPU and TPU): one stable descending sort of the scores, then a
`lax.while_loop` that takes the best box not yet suppressed, records it, and suppresses every box whose
IoU with it exceeds the threshold: one IoU row of N per kept box, at most `max_output` iterations, no
N x N matrix. The IoU arithmetic is torchvision's CPU kernel's (`inter / (area_i + area_j - inter)` in
float32 without FMA, no eps, suppress when `iou > threshold` with the threshold compared as the double it
is there: the kernel in torchvision 0.28's _C.so is mulss, addss, subss, divss, cvtss2sd, comisd), so the
kept indices equal torchvision's.

Ties. torchvision's CPU kernel orders boxes with `scores.sort(descending=True)`, which is not stable:
for N <= 16 it keeps tied boxes in index order (insertion sort), for larger N the order of tied scores
is whatever libstdc++'s introsort leaves. Here ties always go in index order (a stable sort), which is
torchvision's order whenever its order is defined by the scores alone.
"""
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hatnet_jax.structures import boxes as box_ops
from hatnet_jax.structures.exact import rounded


def _threshold_below(iou_threshold: float) -> np.float32:
  """The largest float32 <= `iou_threshold`: for a float32 iou, `iou > it` is exactly torchvision's
  `iou > (double) iou_threshold` (plain float32 rounding would round 0.3 up and keep an IoU of f32(0.3))."""
  if not isinstance(iou_threshold, (int, float, np.floating)):
    raise ValueError(f'iou_threshold must be a static Python number, got {type(iou_threshold).__name__}')
  if math.isnan(iou_threshold):
    raise ValueError('iou_threshold is NaN')
  t32 = np.float32(iou_threshold)
  return np.nextafter(t32, np.float32(-np.inf)) if float(t32) > float(iou_threshold) else t32


def _check(boxes, scores, valid, max_output):
  boxes = box_ops.as_boxes('boxes', boxes)
  scores = jnp.asarray(scores, jnp.float32)
  if boxes.ndim != 2 or scores.shape != boxes.shape[:1]:
    raise ValueError(f'boxes must be [N, 4] and scores [N] (vmap for a batch), got {boxes.shape} and {scores.shape}')
  if not isinstance(max_output, (int, np.integer)) or max_output < 1:
    raise ValueError(f'max_output must be a static int >= 1, got {max_output!r}')
  keep = ~jnp.isnan(scores) & (scores > -jnp.inf)  # -inf (and NaN) scores mark padding: never kept
  if valid is not None:
    valid = jnp.asarray(valid)
    if valid.shape != scores.shape:
      raise ValueError(f'valid must be [N] bool like scores, got {valid.shape} for scores {scores.shape}')
    keep &= valid.astype(bool)
  return boxes, scores, keep


def _greedy(boxes, scores, valid, threshold, max_output, labels=None):
  """The loop shared by nms and batched_nms; `labels` (sorted with the boxes) limits suppression to a class."""
  # Stable descending order; the key makes -0.0 == 0.0 (as torch's comparisons do) and puts padding last.
  key = jnp.where(valid, jnp.where(scores == 0, 0.0, scores), -jnp.inf)
  order = jnp.argsort(key, descending=True, stable=True).astype(jnp.int32)
  b = boxes[order]
  areas = box_ops.area(b)
  same = None if labels is None else labels[order]

  def body(state):
    count, suppressed, keep = state
    i = jnp.argmin(suppressed)  # the best box still standing (first False)
    lt = jnp.maximum(b[i, :2], b[:, :2])
    rb = jnp.minimum(b[i, 2:], b[:, 2:])
    wh = jnp.maximum(rb - lt, 0.0)
    inter = rounded(wh[:, 0] * wh[:, 1])
    over = inter / (areas[i] + areas - inter) > threshold  # 0/0 = NaN: not suppressed, as torchvision
    if same is not None:
      over &= same == same[i]
    suppressed = (suppressed | over).at[i].set(True)
    return count + 1, suppressed, keep.at[count].set(order[i])

  def cond(state):
    count, suppressed, _ = state
    return (count < max_output) & ~jnp.all(suppressed)

  init = (jnp.int32(0), ~valid[order], jnp.zeros((max_output,), jnp.int32))
  count, _, keep = lax.while_loop(cond, body, init)
  kept = jnp.arange(max_output) < count
  return jnp.where(kept, keep, 0), kept


def nms(boxes: jax.Array, scores: jax.Array, iou_threshold: float, max_output: int,
        valid: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """Greedy NMS of boxes [N, 4] xyxy by scores [N]: (indices [max_output] int32, valid [max_output] bool).

  The kept boxes' indices in descending score order (ties: lower index first), the first `max_output`
  of what torchvision.ops.nms(boxes, scores, iou_threshold) returns; a box is suppressed by a kept
  higher-scored box when their IoU > iou_threshold (a static float). Entries with score -inf or NaN, or
  `valid` [N] False, are never kept and suppress nothing. Unused output slots hold index 0 and valid
  False. One image at a time: vmap for a batch.
  """
  boxes, scores, keep = _check(boxes, scores, valid, max_output)
  threshold = _threshold_below(iou_threshold)
  if boxes.shape[0] == 0:
    return jnp.zeros((max_output,), jnp.int32), jnp.zeros((max_output,), bool)
  return _greedy(boxes, scores, keep, threshold, max_output)


def batched_nms(boxes: jax.Array, scores: jax.Array, labels: jax.Array, iou_threshold: float, max_output: int,
                valid: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """Class-wise NMS: as `nms`, but a box only suppresses boxes of its own label.

  torchvision.ops.batched_nms / mmcv's batched_nms (which mmdet 3.3.0 calls): the IoUs are those of the
  boxes offset by label * (max coordinate + 1) (their "coordinate trick", max over the valid boxes),
  so they round exactly as there; boxes of different labels are additionally kept apart by their labels,
  even where the trick would let them touch (negative coordinates). Returns the kept indices in descending
  score order across all classes, (indices [max_output] int32, valid [max_output] bool).
  """
  boxes, scores, keep = _check(boxes, scores, valid, max_output)
  labels = jnp.asarray(labels)
  if labels.shape != scores.shape:
    raise ValueError(f'labels must be [N] like scores, got {labels.shape} for scores {scores.shape}')
  threshold = _threshold_below(iou_threshold)
  if boxes.shape[0] == 0:
    return jnp.zeros((max_output,), jnp.int32), jnp.zeros((max_output,), bool)
  max_coordinate = jnp.max(jnp.where(keep[:, None], boxes, -jnp.inf))
  max_coordinate = jnp.where(jnp.any(keep), max_coordinate, 0.0)
  offsets = rounded(labels.astype(jnp.float32) * (max_coordinate + 1.0))
  return _greedy(boxes + offsets[:, None], scores, keep, threshold, max_output, labels=labels)
