"""The R-CNN box head's targets for sampled RoIs, as mmdetection 3.3.0's BBoxHead._get_targets_single with
Mask R-CNN's settings (pos_weight -1, i.e. 1; reg_decoded_bbox False; DeltaXYWH stds (0.1, 0.1, 0.2, 0.2)).

Positive RoIs get their GT's label, weight 1, the deltas that move the RoI onto the GT box and box weights
1; negative RoIs get the background label num_classes, weight 1 and zero box targets/weights; unused
sample slots get the background label with every weight 0. The box targets are class-agnostic [S, 4]: the
loss picks the predicted deltas of the target class (reg_class_agnostic False), as mmdet's loss does.
"""
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hatnet_jax.structures import boxes as box_ops
from hatnet_jax.structures import coder

RCNN_STDS = (0.1, 0.1, 0.2, 0.2)
_UNIT = np.array([0.0, 0.0, 1.0, 1.0], np.float32)  # a well-formed dummy box for the rows not encoded


def roi_box_targets(rois: jax.Array, is_positive: jax.Array, valid: jax.Array, gt_boxes: jax.Array,
                    gt_labels: jax.Array, assigned_gt: jax.Array, num_classes: int,
                    stds: Sequence[float] = RCNN_STDS) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Targets of the S sampled RoIs of ONE image (vmap for a batch).

  Args:
    rois: [S, 4] the sampled boxes (canvas frame); is_positive, valid: [S] bool (structures/sampling.py).
    gt_boxes: [G, 4], gt_labels: [G] int in [0, num_classes).
    assigned_gt: [S] int, the assigner's value of each sample (g + 1 for a positive to GT row g; the value
      of other rows is not read).
    num_classes: the foreground classes (static); background is label num_classes.
  Returns:
    (labels [S] int32, label_weights [S] float32, box_targets [S, 4] float32, box_weights [S, 4] float32).
  """
  rois, gt_boxes = box_ops.as_boxes('rois', rois), box_ops.as_boxes('gt_boxes', gt_boxes)
  is_positive, valid = jnp.asarray(is_positive).astype(bool), jnp.asarray(valid).astype(bool)
  gt_labels, assigned_gt = jnp.asarray(gt_labels), jnp.asarray(assigned_gt)
  s = rois.shape[0]
  if rois.ndim != 2 or is_positive.shape != (s,) or valid.shape != (s,) or assigned_gt.shape != (s,):
    raise ValueError(f'rois must be [S, 4] with is_positive, valid and assigned_gt [S]: got {rois.shape}, '
                     f'{is_positive.shape}, {valid.shape}, {assigned_gt.shape} (one image: vmap for a batch)')
  if gt_boxes.ndim != 2 or gt_labels.shape != gt_boxes.shape[:1]:
    raise ValueError(f'gt_boxes must be [G, 4] and gt_labels [G]: got {gt_boxes.shape} and {gt_labels.shape}')
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f'num_classes must be a static int >= 1 (foreground classes), got {num_classes!r}')
  positive = is_positive & valid
  if gt_boxes.shape[0] == 0:  # no GT row to gather from: no sample can be positive
    positive = jnp.zeros_like(positive)
    gt_boxes, gt_labels = jnp.zeros((1, 4), jnp.float32), jnp.zeros((1,), jnp.int32)
  g = jnp.clip(assigned_gt - 1, 0, gt_boxes.shape[0] - 1)
  labels = jnp.where(positive, gt_labels[g].astype(jnp.int32), num_classes)
  label_weights = valid.astype(jnp.float32)
  # Non-positive rows encode a dummy pair (the RoI onto itself) so no inf/NaN reaches the where.
  targets = coder.encode(jnp.where(positive[:, None], rois, _UNIT), jnp.where(positive[:, None], gt_boxes[g], _UNIT),
                         stds=stds)
  box_targets = jnp.where(positive[:, None], targets, 0.0)
  box_weights = jnp.broadcast_to(positive[:, None], (s, 4)).astype(jnp.float32)
  return labels, label_weights, box_targets, box_weights
