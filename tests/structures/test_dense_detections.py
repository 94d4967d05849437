"""structures.dense_detections: a hand-made two-box case, shapes and errors, then mmdet 3.3.0's
RetinaHead.predict_by_feat on random head outputs (slow: the reference pass).

mmdet's NMS is mmcv's compiled `batched_nms` (absent from mmcv-lite): the reference swaps in mmcv's
batched_nms algorithm (boxes offset by label * (max + 1), one NMS, split_thr 10000) over torchvision's
nms or its transcription (tests/structures/reference_nms.py). mmcv's CPU kernel is the same loop, but
compares the IoU with the threshold as a float instead of a double (the same for 0.5).
"""
import functools

import jax
import numpy as np
import pytest

from hatnet_jax.structures import anchors as anchor_lib
from hatnet_jax.structures import dense_detections

SIZES = ((16, 20), (8, 10), (4, 5), (2, 3), (1, 2))  # a 128 x 160 padded batch


def _maps(rng, batch, num_classes, sizes=SIZES):
  """Per level (cls [B, H, W, 9K], deltas [B, H, W, 36]). The logits of all levels are one shuffled
  linspace: no two scores tie, so every sort has one answer."""
  counts = [batch * h * w * 9 * num_classes for h, w in sizes]
  logits = np.linspace(-6.0, 2.5, sum(counts), dtype=np.float32)[rng.permutation(sum(counts))]
  cls = [part.reshape(batch, h, w, 9 * num_classes)
         for part, (h, w) in zip(np.split(logits, np.cumsum(counts)[:-1]), sizes)]
  box = [rng.normal(0, 0.6, (batch, h, w, 36)).astype(np.float32) for h, w in sizes]
  return cls, box


def test_two_boxes_one_suppressed_and_mapped_back():
  anchors = [np.array([[0, 0, 40, 40], [4, 0, 44, 40], [60, 60, 100, 100]], np.float32)]
  logits = np.array([2.0, -1.0, 1.0, -1.0, 0.5, -9.0], np.float32).reshape(1, 1, 3, 2)  # 3 anchors x 2 classes
  deltas = np.zeros((1, 1, 3, 4), np.float32)
  deltas[0, 0, 2] = [0, 0, 0.5, 0]  # anchor 2 grows to 66 wide: clipped at the image's 90 columns
  out = dense_detections.postprocess([logits], [deltas], anchors, np.array([[95, 90]]), np.array([[0.5, 2.0]]),
                                     max_per_img=4)
  sig = 1 / (1 + np.exp(-np.array([2.0, 1.0, 0.5, -1.0])))
  assert out['valid'].tolist() == [[True, True, True, False]]
  np.testing.assert_allclose(out['scores'][0], [sig[0], sig[2], sig[3], 0], rtol=1e-6)
  assert out['labels'].tolist() == [[0, 0, 1, 0]]  # anchor 1 (IoU 0.82 with anchor 0) suppressed in both classes
  x1 = 80 - 20 * np.exp(0.5)  # anchor 2, 40 * e^0.5 wide around x = 80, clipped to (95, 90), then / (sy, sx)
  np.testing.assert_allclose(out['boxes'][0], [[0, 0, 20, 80], [x1 / 2, 120, 45, 190], [0, 0, 20, 80], [0] * 4],
                             rtol=1e-6)


def test_errors_name_the_input():
  cls, box = _maps(np.random.default_rng(0), 1, 2, sizes=((2, 3),))
  anchors = anchor_lib.grid_anchors([(2, 3)], strides=(8,))
  with pytest.raises(ValueError, match=r'box deltas must be \[B, H, W, A \* 4\]'):
    dense_detections.postprocess(cls, [box[0][..., :8]], anchors, np.ones((1, 2)), np.ones((1, 2)))
  with pytest.raises(ValueError, match='one class map, box map and anchor set per level'):
    dense_detections.postprocess(cls, box, anchors * 2, np.ones((1, 2)), np.ones((1, 2)))
  with pytest.raises(ValueError, match=r'image_size and scale must be \[B, 2\]'):
    dense_detections.postprocess(cls, box, anchors, np.ones((2,)), np.ones((1, 2)))


def _jitted(**cfg):
  return jax.jit(functools.partial(dense_detections.postprocess, **cfg))


def test_jits_with_static_shapes():
  rng = np.random.default_rng(1)
  cls, box = _maps(rng, 2, 3)
  out = _jitted(nms_pre=50, max_per_img=30)(cls, box, anchor_lib.grid_anchors(SIZES),
                                              np.array([[120, 150], [90, 160]]), np.array([[0.5, 0.5], [2.0, 1.5]]))
  assert out['boxes'].shape == (2, 30, 4)
  assert out['scores'].shape == out['labels'].shape == out['valid'].shape == (2, 30)
  scores = np.asarray(out['scores'])
  assert out['valid'].all() and (np.diff(scores, axis=1) <= 0).all() and (scores > 0.05).all()


def _mmcv_batched_nms(nms):
  """mmcv 2.1's batched_nms for horizontal boxes below split_thr, over `nms` as the kernel."""
  import torch  # pylint: disable=g-import-not-at-top

  def batched_nms(boxes, scores, idxs, nms_cfg, class_agnostic=False):
    assert not class_agnostic and boxes.shape[0] < nms_cfg.get('split_thr', 10000)
    offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    keep = nms(boxes + offsets[:, None], scores, nms_cfg['iou_threshold'])
    return torch.cat([boxes[keep], scores[keep][:, None]], -1), keep

  return batched_nms


@pytest.mark.slow
def test_equals_mmdet_retina_head_predict_by_feat(mmdet, nms_reference, monkeypatch):
  import torch  # pylint: disable=g-import-not-at-top
  from mmdet.models.dense_heads import RetinaHead  # pylint: disable=g-import-not-at-top
  from mmdet.models.dense_heads import base_dense_head  # pylint: disable=g-import-not-at-top
  from mmdet.utils import register_all_modules  # pylint: disable=g-import-not-at-top
  from mmengine.config import ConfigDict  # pylint: disable=g-import-not-at-top
  del mmdet
  register_all_modules()
  monkeypatch.setattr(base_dense_head, 'batched_nms', _mmcv_batched_nms(nms_reference.nms))
  num_classes = 4
  test_cfg = ConfigDict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5),
                        max_per_img=100)
  head = RetinaHead(num_classes=num_classes, in_channels=8, test_cfg=test_cfg)
  rng = np.random.default_rng(2)
  cls, box = _maps(rng, 2, num_classes)
  image_size = np.array([[118, 160], [128, 97]])  # (h, w) before padding to 128 x 160
  scale = np.array([[0.37, 0.41], [1.6, 1.25]])  # (sy, sx)
  metas = [dict(img_shape=tuple(int(v) for v in image_size[i]), scale_factor=(float(scale[i, 1]), float(scale[i, 0])))
           for i in range(2)]
  nchw = [torch.from_numpy(np.ascontiguousarray(m.transpose(0, 3, 1, 2))) for m in cls]
  want = head.predict_by_feat(nchw, [torch.from_numpy(np.ascontiguousarray(m.transpose(0, 3, 1, 2))) for m in box],
                              batch_img_metas=metas, rescale=True)
  got = _jitted()(cls, box, anchor_lib.grid_anchors(SIZES), image_size, scale)
  for i in range(2):
    n = int(got['valid'][i].sum())
    ref_scores = want[i].scores.numpy()
    assert n == len(ref_scores) and 0 < n <= 100, (i, n, len(ref_scores))
    assert (np.diff(ref_scores) <= 0).all()
    np.testing.assert_allclose(got['scores'][i, :n], ref_scores, rtol=1e-5)
    np.testing.assert_array_equal(got['labels'][i, :n], want[i].labels.numpy())
    np.testing.assert_allclose(got['boxes'][i, :n], want[i].bboxes.numpy(), rtol=1e-5, atol=1e-3)
