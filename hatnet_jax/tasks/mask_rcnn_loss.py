"""Mask R-CNN's training targets and losses, as mmdet 3.3.0's TwoStageDetector computes them (static shapes).

Per image (mmdet's mask_rcnn_r50_fpn.py train_cfg):
  RPN  anchors (scale 8, ratios 0.5/1/2, strides 4-64), valid inside the 32-padded image; MaxIoUAssigner
       0.7 / 0.3 (min_pos_iou 0.3, low-quality matches); RandomSampler 256 anchors, at most half positive;
       BCE on the sampled anchors' objectness, L1 on the positives' deltas (stds 1); both divided by the
       number of sampled anchors (mmdet's avg_factor: num_pos + num_neg per image, summed).
  RoI  proposals = RPN's predictions (nms_pre 2000 per level, NMS 0.7, 1000 kept), without gradient; the GT
       boxes go in front of them (add_gt_as_proposals, each assigned to itself); MaxIoUAssigner 0.5 / 0.5 on
       the proposals; RandomSampler 512 RoIs, at most a quarter positive; 7x7 RoIAlign from the FPN level of
       each RoI's scale; softmax CE over num_classes + 1 divided by the number of sampled RoIs, L1 on the GT
       class's deltas (stds 0.1/0.1/0.2/0.2) of the positives divided by the same number (mmdet's
       bbox_targets.size(0)).
  mask the positive RoIs (at most 512 / 4 = 128 per image), 14x14 RoIAlign, the mask head's channel of the
       GT class against the GT mask cropped and resized to 28x28 (mask_targets), mean BCE over the
       positives' 28 x 28 pixels.
Crowd GTs take no part (mmdet puts them in batch_gt_instances_ignore, which these assigners do not use).
Every average is over a group of `images_per_group` images (mmdet's per-GPU batch), then over the groups.
"""
from typing import Sequence

import jax
import jax.numpy as jnp

from hatnet_jax.structures import anchors as anchor_lib
from hatnet_jax.structures import assign as assign_lib
from hatnet_jax.structures import coder
from hatnet_jax.structures import mask_targets as mask_target_lib
from hatnet_jax.structures import proposals as proposal_lib
from hatnet_jax.structures import roi_align
from hatnet_jax.structures import roi_targets
from hatnet_jax.structures import sampling
from hatnet_jax.tasks import detection_loss

ROI_STRIDES = (4, 8, 16, 32)  # SingleRoIExtractor's featmap_strides: the RoIs use P2-P5, not P6
RCNN_STDS = (0.1, 0.1, 0.2, 0.2)


def rpn_anchors(maps: Sequence[jax.Array], cfg) -> list[jax.Array]:
  """The RPN anchors of every level for maps [B, H, W, A] of these (static) sizes."""
  sizes = [tuple(m.shape[1:3]) for m in maps]
  return anchor_lib.grid_anchors(sizes, tuple(cfg.rpn_strides), octave_base_scale=cfg.rpn_anchor_scale,
                                 scales_per_octave=1, ratios=tuple(cfg.rpn_ratios))


def _bce(logits: jax.Array, targets: jax.Array) -> jax.Array:
  logits = logits.astype(jnp.float32)
  return jnp.maximum(logits, 0.0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def _per_group(x: jax.Array, group: int) -> jax.Array:
  b = x.shape[0]
  if b % group:
    raise ValueError(f'config.detection.images_per_group={group} must divide the per-step batch of {b} images')
  return x.reshape(b // group, group, *x.shape[1:]).sum(axis=1)


def rpn_loss(obj_maps, delta_maps, batch, keys, cfg, size_divisor: int):
  """(sums, counts) per image: BCE and L1 sums over the sampled anchors and the number sampled."""
  anchors = jnp.concatenate(rpn_anchors(obj_maps, cfg), axis=0)
  num_anchors = obj_maps[0].shape[-1]
  pad_hw = -(-batch['image_size'] // size_divisor) * size_divisor
  valid = jnp.concatenate(anchor_lib.valid_flags([tuple(m.shape[1:3]) for m in obj_maps], tuple(cfg.rpn_strides),
                                                 pad_hw, num_anchors), axis=1)
  logits = detection_loss.flatten_levels(obj_maps, 1)[..., 0]
  deltas = detection_loss.flatten_levels(delta_maps, 4).astype(jnp.float32)

  def one(key, valid, logits, deltas, boxes, box_valid):
    assigned = assign_lib.max_iou_assign(anchors, valid, boxes, box_valid, cfg.rpn_pos_iou_thr, cfg.rpn_neg_iou_thr,
                                         min_pos_iou=cfg.rpn_min_pos_iou)
    idx, is_pos, ok = sampling.random_sample(key, assigned, valid, cfg.rpn_num_samples, cfg.rpn_pos_fraction)
    bce = jnp.sum(jnp.where(ok, _bce(logits[idx], is_pos.astype(jnp.float32)), 0.0))
    gt = boxes[jnp.maximum(assigned[idx] - 1, 0)]
    wanted = coder.encode(anchors[idx], gt)
    l1 = jnp.sum(jnp.where((ok & is_pos)[:, None], jnp.abs(deltas[idx] - wanted), 0.0))
    return bce, l1, jnp.sum(ok).astype(jnp.float32), jnp.sum(ok & is_pos).astype(jnp.float32)

  return jax.vmap(one)(keys, valid, logits, deltas, batch['boxes'], batch['box_valid'])


def proposals(obj_maps, delta_maps, image_size, cfg, nms_pre: int, size_divisor: int):
  """RPN's proposals per image, without gradient: boxes [B, P, 4], valid [B, P]. Anchors on batch padding
  beyond an image's 32-padded extent are left out: mmdet's canvas is the batch's largest image padded to 32,
  ours a fixed canvas that can be larger (equal when the images of a batch share a size, as COCO's mostly do)."""
  anchors = rpn_anchors(obj_maps, cfg)
  pad_hw = -(-image_size // size_divisor) * size_divisor
  flags = anchor_lib.valid_flags([tuple(m.shape[1:3]) for m in obj_maps], tuple(cfg.rpn_strides), pad_hw,
                                 obj_maps[0].shape[-1])
  obj_maps = [jax.lax.stop_gradient(m) for m in obj_maps]
  delta_maps = [jax.lax.stop_gradient(m) for m in delta_maps]

  def one(objs, deltas, hw, valid):
    boxes, _, ok = proposal_lib.rpn_proposals(objs, deltas, anchors, hw, nms_pre=nms_pre,
                                              max_per_img=cfg.rpn_max_per_img, iou_threshold=cfg.rpn_nms_iou,
                                              min_bbox_size=cfg.rpn_min_bbox_size, anchor_valid=valid)
    return boxes, ok

  return jax.vmap(one)(obj_maps, delta_maps, image_size, flags)


def sample_rois(keys, props, prop_valid, batch, cfg):
  """Per image: the proposals assigned, the GT boxes put in front (each positive to itself), sampled:
  rois [S, 4], is_pos [S], valid [S], assigned [S] (g + 1 for a positive to GT row g)."""

  def one(key, props, prop_valid, boxes, box_valid):
    assigned = assign_lib.max_iou_assign(props, prop_valid, boxes, box_valid, cfg.rcnn_pos_iou_thr,
                                         cfg.rcnn_neg_iou_thr, min_pos_iou=cfg.rcnn_min_pos_iou)
    candidates, valid, assigned = sampling.add_gt_as_proposals(props, prop_valid, assigned, boxes, box_valid)
    idx, is_pos, ok = sampling.random_sample(key, assigned, valid, cfg.rcnn_num_samples, cfg.rcnn_pos_fraction)
    return candidates[idx], is_pos & ok, ok, assigned[idx]

  return jax.vmap(one)(keys, props, prop_valid, batch['boxes'], batch['box_valid'])


def roi_window(cfg):
  """config.detection.roi_window as multilevel_roi_align's window: (kh, kw), or None (whole maps) for ()."""
  window = tuple(cfg.get('roi_window', roi_align.DEFAULT_WINDOW))
  return window or None


def pool(features: Sequence[jax.Array], rois: jax.Array, size: int, cfg) -> tuple[jax.Array, jax.Array]:
  """Multi-level RoIAlign per image: features [B, H_l, W_l, C] (P2-P5), rois [B, R, 4] -> [B, R, s, s, C],
  and the number of RoIs whose support did not fit the static window (0 when exact)."""

  def one(maps, boxes):
    return roi_align.multilevel_roi_align(maps, boxes, ROI_STRIDES, (size, size), sampling_ratio=0,
                                          window=roi_window(cfg))

  pooled, overflow = jax.vmap(one)(list(features[:len(ROI_STRIDES)]), rois)
  return pooled, jnp.sum(overflow)


def first_positives(is_pos: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
  """Per image, the slots of the first `count` positive samples (static) and which of them are real."""
  order = jnp.argsort(~is_pos, axis=1, stable=True)[:, :count]
  return order, jnp.take_along_axis(is_pos, order, axis=1)


def mask_rcnn_loss(module, images, batch, rng, cfg, num_classes: int, size_divisor: int, train: bool = True):
  """Runs Mask R-CNN on a batch inside `model.apply(..., method=...)` and returns (loss, metrics).

  `module` is the bound models.MaskRCNN; `cfg` config.detection; `rng` keys the samplers (the task folds in
  the step, so a resumed run samples the same RoIs).
  """
  feats = module.features(images, train)
  obj_maps, delta_maps = module.rpn(feats)
  b = images.shape[0]
  k_rpn, k_rcnn = jax.random.split(rng)
  bce, l1, sampled, rpn_pos = rpn_loss(obj_maps, delta_maps, batch, jax.random.split(k_rpn, b), cfg, size_divisor)

  props, prop_valid = proposals(obj_maps, delta_maps, batch['image_size'], cfg, cfg.rpn_train_nms_pre, size_divisor)
  rois, is_pos, ok, assigned = sample_rois(jax.random.split(k_rcnn, b), props, prop_valid, batch, cfg)
  pooled, overflow_box = pool(feats, rois, 7, cfg)
  s = rois.shape[1]
  cls_logits, deltas = module.box_head(pooled.reshape(b * s, *pooled.shape[2:]), train)
  labels, label_w, box_t, box_w = jax.vmap(
      lambda r, p, v, gb, gl, a: roi_targets.roi_box_targets(r, p, v, gb, gl, a, num_classes, RCNN_STDS))(
          rois, is_pos, ok, batch['boxes'], jnp.maximum(batch['labels'], 0), assigned)
  logp = jax.nn.log_softmax(cls_logits.astype(jnp.float32).reshape(b, s, -1), axis=-1)
  ce = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
  ce_sum = jnp.sum(label_w * ce, axis=1)
  deltas = deltas.astype(jnp.float32).reshape(b, s, num_classes, 4)
  picked = jnp.take_along_axis(deltas, jnp.clip(labels, 0, num_classes - 1)[..., None, None], axis=2)[:, :, 0]
  box_l1 = jnp.sum(box_w * jnp.abs(picked - box_t), axis=(1, 2))
  n_rois = jnp.sum(label_w > 0, axis=1).astype(jnp.float32)
  gt_idx = jnp.maximum(assigned - 1, 0)

  p = int(cfg.rcnn_num_samples * cfg.rcnn_pos_fraction)
  slots, pos_ok = first_positives(is_pos, p)
  pos_rois = jnp.take_along_axis(rois, slots[..., None], axis=1)
  pos_gt = jnp.take_along_axis(gt_idx, slots, axis=1)
  pos_labels = jnp.maximum(jnp.take_along_axis(batch['labels'], pos_gt, axis=1), 0)
  pooled14, overflow_mask = pool(feats, pos_rois, 14, cfg)
  mask_logits = module.mask_head(pooled14.reshape(b * p, *pooled14.shape[2:]))
  mask_logits = mask_logits.reshape(b, p, *mask_logits.shape[1:3], num_classes)
  mask_logits = jnp.take_along_axis(mask_logits, pos_labels[:, :, None, None, None], axis=-1)[..., 0]
  chunk = cfg.get('mask_target_chunk', 16)
  targets = jax.vmap(lambda m, r, g: mask_target_lib.mask_targets(m, r, g, mask_logits.shape[-1], chunk=chunk))(
      batch['masks'], pos_rois, pos_gt)
  mask_bce = jnp.sum(jnp.where(pos_ok[..., None, None], _bce(mask_logits, targets), 0.0), axis=(1, 2, 3))
  n_pos = jnp.sum(pos_ok, axis=1).astype(jnp.float32)

  group = cfg.images_per_group
  g = lambda x: _per_group(x, group)  # noqa: E731
  rpn_norm = jnp.maximum(g(sampled), 1.0)
  loss_rpn_cls = jnp.mean(g(bce) / rpn_norm)
  loss_rpn_box = jnp.mean(g(l1) / rpn_norm)
  roi_norm = jnp.maximum(g(n_rois), 1.0)
  loss_cls = jnp.mean(g(ce_sum) / roi_norm)
  loss_box = jnp.mean(g(box_l1) / roi_norm)
  pixels = mask_logits.shape[-1] * mask_logits.shape[-2]
  loss_mask = jnp.mean(g(mask_bce) / jnp.maximum(g(n_pos) * pixels, 1.0))  # mmdet: 0 without positives
  loss = loss_rpn_cls + loss_rpn_box + loss_cls + loss_box + loss_mask
  correct = jnp.argmax(logp, axis=-1) == labels
  metrics = {'train_loss': loss, 'train_loss_rpn_cls': loss_rpn_cls, 'train_loss_rpn_bbox': loss_rpn_box,
             'train_loss_cls': loss_cls, 'train_loss_bbox': loss_box, 'train_loss_mask': loss_mask,
             'train_rcnn_accuracy': jnp.sum(correct & ok) / jnp.maximum(jnp.sum(ok), 1),
             'train_rpn_positives_per_image': jnp.mean(rpn_pos),
             'train_rcnn_positives_per_image': jnp.mean(n_pos),
             'train_proposals_per_image': jnp.mean(jnp.sum(prop_valid, axis=1).astype(jnp.float32)),
             'train_roi_align_overflow': (overflow_box + overflow_mask).astype(jnp.float32)}
  return loss, metrics
