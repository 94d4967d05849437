"""RetinaNet's training targets and loss, as mmdet's AnchorHead/RetinaHead compute them (static shapes).

Per image: the anchors of every level (mmdet's order), valid where their location lies inside the image's
32-padded extent (mmdet's valid flags); MaxIoUAssigner (IoU >= 0.5 positive, < 0.4 negative, in between
ignored, each GT's best anchors positive when their IoU > 0); padded and crowd GTs are absent (mmdet drops
crowd boxes from RetinaNet's targets: they only feed an assigner's ignore_iof_thr, which RetinaNet leaves at -1).

Loss: sigmoid focal loss (gamma 2, alpha 0.25) over every positive and negative anchor and every class (a
negative's target is all zeros), plus L1 on the encoded deltas (means 0, stds 1) of the positives; both summed
and divided by the number of positives, each image counting at least 1 (mmdet's avg_factor: the sum over
images of max(positives, 1)). mmdet divides per GPU (that sum runs over the GPU's images, not reduced over
GPUs) and averages the gradients over GPUs; `images_per_group` reproduces that exactly: the batch is cut into
groups of that many images (PVT's recipe: 8 GPUs x 2 images), each group's sums are divided by its own
avg_factor, and the groups' losses are averaged.
"""
from typing import Sequence

import jax
import jax.numpy as jnp

from hatnet_jax.structures import anchors as anchor_lib
from hatnet_jax.structures import assign as assign_lib
from hatnet_jax.structures import coder


def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, gamma: float = 2.0, alpha: float = 0.25) -> jax.Array:
  """Elementwise focal loss (Lin et al. 2017) as mmdet's `py_sigmoid_focal_loss`, in float32."""
  logits, targets = logits.astype(jnp.float32), targets.astype(jnp.float32)
  p = jax.nn.sigmoid(logits)
  pt = (1.0 - p) * targets + p * (1.0 - targets)
  weight = (alpha * targets + (1.0 - alpha) * (1.0 - targets)) * pt ** gamma
  # BCE with logits, written stably: max(x, 0) - x t + log(1 + exp(-|x|)).
  bce = jnp.maximum(logits, 0.0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  return bce * weight


def flatten_levels(maps: Sequence[jax.Array], per_anchor: int) -> jax.Array:
  """Per-level [B, H, W, A * C] -> [B, sum_l H W A, C] in mmdet's anchor order (location-major)."""
  return jnp.concatenate([m.reshape(m.shape[0], -1, per_anchor) for m in maps], axis=1)


def level_anchors(maps: Sequence[jax.Array], cfg) -> list[jax.Array]:
  """The anchors of every level for maps of these (static) sizes."""
  sizes = [tuple(m.shape[1:3]) for m in maps]
  return anchor_lib.grid_anchors(sizes, tuple(cfg.strides), octave_base_scale=cfg.octave_base_scale,
                                 scales_per_octave=cfg.scales_per_octave, ratios=tuple(cfg.ratios))


def targets(anchors: jax.Array, anchor_valid: jax.Array, batch: dict, cfg):
  """MaxIoUAssigner per image: assigned [B, N] (0 negative, -1 ignored, i + 1 positive to GT i)."""

  def one(valid, boxes, box_valid):
    return assign_lib.max_iou_assign(anchors, valid, boxes, box_valid, cfg.pos_iou_thr, cfg.neg_iou_thr,
                                     min_pos_iou=cfg.min_pos_iou)

  return jax.vmap(one)(anchor_valid, batch['boxes'], batch['box_valid'])


def retinanet_loss(cls_maps: Sequence[jax.Array], box_maps: Sequence[jax.Array], batch: dict, cfg,
                   num_classes: int, size_divisor: int = 32) -> tuple[jax.Array, dict]:
  """(loss, metrics) of a batch; `cfg` is config.detection (anchors, assigner, focal and grouping settings);
  anchors are valid inside each image's size padded to `size_divisor` (mmdet's pad_shape)."""
  anchor_list = level_anchors(cls_maps, cfg)
  anchors = jnp.concatenate(anchor_list, axis=0)
  num_anchors = cls_maps[0].shape[-1] // num_classes
  pad_hw = -(-batch['image_size'] // size_divisor) * size_divisor  # mmdet's pad_shape per image
  valid = jnp.concatenate(anchor_lib.valid_flags([tuple(m.shape[1:3]) for m in cls_maps], tuple(cfg.strides),
                                                 pad_hw, num_anchors), axis=1)
  assigned = targets(anchors, valid, batch, cfg)
  pos, used = assigned > 0, assigned >= 0
  gt_index = jnp.maximum(assigned - 1, 0)
  gt_labels = jnp.take_along_axis(batch['labels'], gt_index, axis=1)
  gt_boxes = jnp.take_along_axis(batch['boxes'], gt_index[..., None], axis=1)

  logits = flatten_levels(cls_maps, num_classes)
  onehot = jax.nn.one_hot(gt_labels, num_classes, dtype=jnp.float32) * pos[..., None]
  focal = sigmoid_focal_loss(logits, onehot, cfg.focal_gamma, cfg.focal_alpha)
  cls_sum = jnp.sum(jnp.where(used[..., None], focal, 0.0), axis=(1, 2))
  deltas = flatten_levels(box_maps, 4).astype(jnp.float32)
  wanted = coder.encode(jnp.broadcast_to(anchors, gt_boxes.shape), gt_boxes)
  box_sum = jnp.sum(jnp.where(pos[..., None], jnp.abs(deltas - wanted), 0.0), axis=(1, 2))
  num_pos = jnp.sum(pos, axis=1).astype(jnp.float32)

  group = cfg.images_per_group
  b = cls_sum.shape[0]
  if b % group:
    raise ValueError(f'config.detection.images_per_group={group} must divide the per-step batch of {b} images')

  def per_group(x):
    return x.reshape(b // group, group).sum(axis=1)

  norm = per_group(jnp.maximum(num_pos, 1.0))  # mmdet's SamplingResult: num_pos = max(positives, 1) per image
  loss_cls = jnp.mean(per_group(cls_sum) / norm)
  loss_box = cfg.box_loss_weight * jnp.mean(per_group(box_sum) / norm)
  loss = loss_cls + loss_box
  metrics = {'train_loss': loss, 'train_loss_focal': loss_cls, 'train_loss_l1': loss_box,
             'train_positives_per_image': jnp.mean(num_pos),
             'train_ignored_per_image': jnp.mean(jnp.sum(valid & (assigned < 0), axis=1).astype(jnp.float32))}
  return loss, metrics
