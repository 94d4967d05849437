"""RetinaNet's targets and loss (hatnet_jax/tasks/detection_loss.py): a hand-checked case in NumPy, the
per-group normalisation, and (slow, with mmdet 3.3.0) equality with mmdet's RetinaHead.loss_by_feat on the
same maps, boxes and image sizes: crowd boxes, an image without objects, a GT no anchor overlaps by 0.5."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import det_default
from hatnet_jax.structures import anchors as anchor_lib
from hatnet_jax.tasks import detection_loss

K = 3  # classes
A = 9


def _cfg(**kw):
  c = det_default.detection_config()
  c.update(kw)
  return c


def _maps(rng, canvas, strides=(8, 16, 32, 64, 128), batch=2):
  sizes = [(-(-canvas[0] // s), -(-canvas[1] // s)) for s in strides]
  cls = [rng.normal(size=(batch, h, w, A * K)).astype(np.float32) for h, w in sizes]
  box = [(0.3 * rng.normal(size=(batch, h, w, A * 4))).astype(np.float32) for h, w in sizes]
  return cls, box


def _batch(boxes, labels, valid, image_size):
  return {'boxes': jnp.asarray(boxes, jnp.float32), 'labels': jnp.asarray(labels, jnp.int32),
          'box_valid': jnp.asarray(valid, bool), 'image_size': jnp.asarray(image_size, jnp.int32)}


def test_focal_loss_matches_its_formula():
  x = np.array([-3.0, -0.5, 0.0, 0.7, 4.0], np.float32)
  for t in (0.0, 1.0):
    p = 1 / (1 + np.exp(-x.astype(np.float64)))
    pt = (1 - p) * t + p * (1 - t)
    want = -(t * np.log(p) + (1 - t) * np.log(1 - p)) * (0.25 * t + 0.75 * (1 - t)) * pt ** 2
    got = detection_loss.sigmoid_focal_loss(jnp.asarray(x), jnp.full_like(x, t))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_one_positive_hand_case():
  """A 1-level model at stride 32 with one 32 px anchor per location (neighbours do not overlap) and one GT
  exactly on anchor 6: that anchor is the only positive, its target deltas are 0 (L1 = |prediction|), every
  other anchor is negative, and the sums are divided by 1 positive."""
  cfg = _cfg(strides=(32,), octave_base_scale=1, scales_per_octave=1, ratios=(1.0,), images_per_group=1)
  rng = np.random.default_rng(0)
  cls = [rng.normal(size=(1, 4, 4, K)).astype(np.float32)]
  box = [rng.normal(size=(1, 4, 4, 4)).astype(np.float32)]
  anchors = np.asarray(detection_loss.level_anchors(cls, cfg)[0])
  np.testing.assert_allclose(anchors[6], [48, 16, 80, 48])  # location (y, x) = (1, 2): centre x 64, y 32, side 32
  batch = _batch([[anchors[6], [0, 0, 0, 0]]], [[1, -1]], [[True, False]], [[128, 128]])
  loss, metrics = detection_loss.retinanet_loss(cls, box, batch, cfg, K)
  logits = cls[0].reshape(16, K).astype(np.float64)
  target = np.zeros((16, K))
  target[6, 1] = 1
  p = 1 / (1 + np.exp(-logits))
  pt = (1 - p) * target + p * (1 - target)
  focal = -(target * np.log(p) + (1 - target) * np.log(1 - p)) * (0.25 * target + 0.75 * (1 - target)) * pt ** 2
  want_cls = focal.sum() / 1.0
  want_box = np.abs(box[0].reshape(16, 4)[6]).sum()
  np.testing.assert_allclose(metrics['train_loss_focal'], want_cls, rtol=1e-5)
  np.testing.assert_allclose(metrics['train_loss_l1'], want_box, rtol=1e-5)
  np.testing.assert_allclose(loss, want_cls + want_box, rtol=1e-5)
  assert float(metrics['train_positives_per_image']) == 1.0
  assert float(metrics['train_ignored_per_image']) == 0.0


def test_groups_normalise_separately_and_average():
  """images_per_group=1 on two images = the mean of each image's loss alone (mmdet: one image per GPU)."""
  rng = np.random.default_rng(1)
  cls, box = _maps(rng, (64, 96))
  batch = _batch([[[10, 12, 40, 50], [50, 8, 90, 60]], [[5, 5, 30, 30], [0, 0, 0, 0]]], [[0, 2], [1, -1]],
                 [[True, True], [True, False]], [[64, 96], [60, 90]])
  cfg = _cfg(images_per_group=1)
  both, _ = detection_loss.retinanet_loss(cls, box, batch, cfg, K)
  alone = [detection_loss.retinanet_loss([c[i:i + 1] for c in cls], [b[i:i + 1] for b in box],
                                         jax.tree.map(lambda x: x[i:i + 1], batch), cfg, K)[0] for i in range(2)]
  np.testing.assert_allclose(both, np.mean(alone), rtol=1e-6)
  cfg.images_per_group = 2
  pooled, metrics = detection_loss.retinanet_loss(cls, box, batch, cfg, K)
  assert not math.isclose(float(pooled), float(both), rel_tol=1e-4)  # pooled positives: another weighting
  with pytest.raises(ValueError, match='images_per_group=3'):
    detection_loss.retinanet_loss(cls, box, batch, _cfg(images_per_group=3), K)


def test_no_objects_counts_one_positive_per_image():
  rng = np.random.default_rng(2)
  cls, box = _maps(rng, (64, 64), batch=2)
  batch = _batch(np.zeros((2, 3, 4)), -np.ones((2, 3)), np.zeros((2, 3), bool), [[64, 64], [40, 64]])
  loss, metrics = detection_loss.retinanet_loss(cls, box, batch, _cfg(), K)
  assert float(metrics['train_loss_l1']) == 0.0 and float(metrics['train_positives_per_image']) == 0.0
  assert np.isfinite(float(loss)) and float(loss) > 0
  # Each image counts max(positives, 1) = 1: the group's focal sum is halved.
  cfg = _cfg(images_per_group=2)
  logits = np.concatenate([c.reshape(2, -1) for c in cls], axis=1)
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  valid = np.concatenate([np.asarray(v) for v in anchor_lib.valid_flags(
      [c.shape[1:3] for c in cls], cfg.strides, np.array([[64, 64], [64, 64]]), A)], axis=1)  # 40 pads to 64
  focal = 0.75 * p ** 2 * -np.log(1 - p)
  want = sum(focal[i].reshape(-1, K)[valid[i]].sum() for i in range(2)) / 2
  np.testing.assert_allclose(loss, want, rtol=1e-5)


def _mmdet_head(num_classes):
  pytest.importorskip('mmdet')
  from tests.references import mmseg_stub  # pylint: disable=g-import-not-at-top
  mmseg_stub.install()
  from mmdet.models.dense_heads import RetinaHead  # pylint: disable=g-import-not-at-top
  from mmdet.utils import register_all_modules  # pylint: disable=g-import-not-at-top
  from mmengine.config import ConfigDict  # pylint: disable=g-import-not-at-top
  register_all_modules()
  train_cfg = ConfigDict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0,
                                       ignore_iof_thr=-1),
                         sampler=dict(type='PseudoSampler'), allowed_border=-1, pos_weight=-1, debug=False)
  return RetinaHead(num_classes=num_classes, in_channels=8, feat_channels=8, train_cfg=train_cfg,
                    anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4, scales_per_octave=3,
                                          ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64, 128]),
                    bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4, target_stds=[1.0] * 4),
                    loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
                    loss_bbox=dict(type='L1Loss', loss_weight=1.0))


@pytest.mark.slow
def test_equals_mmdet_retinahead_loss():
  """Three images on a 128 x 192 canvas, one group (= mmdet on one GPU with the three images): image 0 has
  two objects and a crowd box (absent from mmdet's targets), image 1 a small object no anchor overlaps by 0.5
  and a padded extent smaller than the canvas (invalid anchors), image 2 nothing."""
  import torch  # pylint: disable=g-import-not-at-top
  from mmengine.structures import InstanceData  # pylint: disable=g-import-not-at-top
  head = _mmdet_head(K)
  rng = np.random.default_rng(3)
  canvas = (128, 192)
  cls, box = _maps(rng, canvas, batch=3)
  boxes = np.zeros((3, 4, 4), np.float32)
  labels = -np.ones((3, 4), np.int64)
  valid = np.zeros((3, 4), bool)
  boxes[0, :3] = [[10.5, 20.25, 70, 90], [100, 30, 180, 120], [0, 0, 60, 60]]
  labels[0, :3], valid[0, :2] = [0, 2, 1], True  # the third is a crowd box: not a target
  boxes[1, 0], labels[1, 0], valid[1, 0] = [40, 40, 49, 47], 1, True  # 9 x 7: best IoU with 16 px anchors < 0.5
  image_size = np.array([[128, 190], [90, 120], [128, 192]])
  ours, metrics = detection_loss.retinanet_loss(cls, box, _batch(boxes, labels, valid, image_size),
                                                _cfg(images_per_group=3), K)
  to_nchw = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  gts = [InstanceData(bboxes=torch.from_numpy(boxes[i][valid[i]]), labels=torch.from_numpy(labels[i][valid[i]]))
         for i in range(3)]
  metas = [{'img_shape': tuple(image_size[i]), 'pad_shape': tuple(-(-image_size[i] // 32) * 32),
            'batch_input_shape': canvas} for i in range(3)]
  losses = head.loss_by_feat([to_nchw(c) for c in cls], [to_nchw(b) for b in box], gts, metas)
  want_cls = float(sum(losses['loss_cls']))
  want_box = float(sum(losses['loss_bbox']))
  np.testing.assert_allclose(metrics['train_loss_focal'], want_cls, rtol=2e-5)
  np.testing.assert_allclose(metrics['train_loss_l1'], want_box, rtol=2e-5)
  assert float(metrics['train_positives_per_image']) > 0
