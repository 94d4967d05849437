"""structures.roi_detections: a hand-made case (score_thr, class-wise NMS, clipping, invalid RoIs), the
candidate cap and its overflow count, errors, jit/vmap; then mmdet 3.3.0's BBoxHead.predict_by_feat
(rescale=False, as in Mask R-CNN) on random head outputs: RoIs inside and across the image border, tied
scores, an image without RoIs, an image whose RoIs are all padding.

mmdet's batched_nms is mmcv's compiled op: the reference uses tests/structures/test_proposals.py's
transcription of mmcv's algorithm over tests/structures/reference_nms.py. Ties: torch.Tensor.sort is made
stable for the tie case (mmdet's order is then the one roi_detections.py states). Softmax: torch's and
XLA's differ by an ulp on ~30 % of entries, so the random cases use logits whose pair scores are far
apart (ties only between identical logit rows, which both compute identically).
"""
import functools

import jax
import numpy as np
import pytest

from hatnet_jax.structures import roi_detections
from tests.structures.test_proposals import mmcv_batched_nms
from tests.structures.test_proposals import stable_sort


@functools.partial(jax.jit, static_argnames=('score_thr', 'iou_threshold', 'max_per_img', 'max_candidates'))
def _post(rois, roi_valid, logits, deltas, image_hw, **cfg):
  return roi_detections.roi_postprocess(rois, roi_valid, logits, deltas, image_hw, **cfg)


def _unpack(out):
  boxes, scores, labels, valid, overflow = (np.asarray(x) for x in out)
  n = int(valid.sum())
  assert valid.tolist() == [True] * n + [False] * (len(valid) - n)
  assert not boxes[n:].any() and not scores[n:].any() and not labels[n:].any()
  return boxes[:n], scores[:n], labels[:n], int(overflow)


def _hand():
  rois = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 70, 70], [0, 0, 10, 10]], np.float32)
  # 2 classes + background. Softmax rows: RoI 0 (0.6, 0.3, 0.1) ...
  probs = np.array([[0.6, 0.3, 0.1], [0.5, 0.04, 0.46], [0.2, 0.7, 0.1], [0.9, 0.05, 0.05]], np.float32)
  deltas = np.zeros((4, 8), np.float32)
  deltas[2, 4:6] = [1.0, 0.0]  # RoI 2, class 1: dx 1.0 * std 0.1 * w 20 = +2 -> (52, 50, 72, 70), clipped at 60 wide
  return rois, np.log(probs), deltas


def test_by_hand():
  rois, logits, deltas = _hand()
  valid = np.array([True, True, True, False])  # RoI 3 (the best score) is padding
  boxes, scores, labels, overflow = _unpack(_post(rois, valid, logits, deltas, np.array([80, 60]), max_per_img=5))
  # Pairs > 0.05: (0, c0) .6, (0, c1) .3, (1, c0) .5, (2, c0) .2, (2, c1) .7; (1, c1) .04 is below.
  # Class 0: RoI 0 suppresses RoI 1 (IoU 90 / 110); class 1 keeps both.
  np.testing.assert_allclose(scores, [0.7, 0.6, 0.3, 0.2], rtol=1e-6)
  assert labels.tolist() == [1, 0, 1, 0] and overflow == 0
  np.testing.assert_allclose(boxes, [[52, 50, 60, 70], [0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 70]], rtol=1e-6)
  # A cap of 3 candidates keeps the 3 best pairs (0.7, 0.6, 0.5): 2 pairs cut, RoI 1 still suppressed.
  boxes, scores, labels, overflow = _unpack(_post(rois, valid, logits, deltas, np.array([80, 60]), max_candidates=3))
  np.testing.assert_allclose(scores, [0.7, 0.6], rtol=1e-6)
  assert labels.tolist() == [1, 0] and overflow == 2
  _, scores, _, _ = _unpack(_post(rois, valid, logits, deltas, np.array([80, 60]), max_per_img=2, score_thr=0.25))
  np.testing.assert_allclose(scores, [0.7, 0.6], rtol=1e-6)


def test_errors_name_the_input():
  rois, logits, deltas = _hand()
  with pytest.raises(ValueError, match=r'box_deltas must be class-specific \[R, num_classes \* 4\]'):
    roi_detections.roi_postprocess(rois, np.ones(4, bool), logits, deltas[:, :4], np.array([9, 9]))
  with pytest.raises(ValueError, match=r'rois must be \[R, 4\], roi_valid \[R\] and cls_logits'):
    roi_detections.roi_postprocess(rois, np.ones(3, bool), logits, deltas, np.array([9, 9]))
  with pytest.raises(ValueError, match=r'image_hw must be \(h, w\) of one image'):
    roi_detections.roi_postprocess(rois, np.ones(4, bool), logits, deltas, np.array([[9, 9]]))
  with pytest.raises(ValueError, match='max_candidates and max_per_img must be static ints >= 1'):
    roi_detections.roi_postprocess(rois, np.ones(4, bool), logits, deltas, np.array([9, 9]), max_candidates=0)


def _head_outputs(rng, r, num_classes, ties=False):
  """RoIs over a 100 x 120 image and beyond its border; logits whose foreground pairs have well separated
  scores: per RoI one class well above the rest; with ties, every 4th RoI repeats RoI 0's logits and
  deltas on nearly the same box, so which of them NMS keeps depends on the tie order."""
  xy = rng.uniform(-10, 110, (r, 2))
  rois = np.concatenate([xy, xy + rng.uniform(5, 50, (r, 2))], 1).astype(np.float32)
  logits = rng.choice(np.arange(-40, 0, dtype=np.float32) / 8, (r, num_classes + 1), replace=True)
  logits[np.arange(r), rng.integers(0, num_classes + 1, r)] += 3 + rng.permutation(r) / r
  deltas = rng.normal(0, 1, (r, num_classes * 4)).astype(np.float32)
  if ties:  # RoI 0 scores best in class 0; its copies (every 4th RoI, shifted by < 2 px) tie with it
    logits[0, 0] = 9.0
    logits[::4], deltas[::4] = logits[0], deltas[0]
    rois[::4] = np.array([20, 20, 60, 70], np.float32) + rng.uniform(0, 2, (len(rois[::4]), 1)).astype(np.float32)
  return rois, logits.astype(np.float32), deltas


def test_jits_and_vmaps_with_fixed_shapes():
  rng = np.random.default_rng(0)
  parts = [_head_outputs(rng, 50, 6) for _ in range(2)]
  rois, logits, deltas = (np.stack(p) for p in zip(*parts))
  f = jax.jit(jax.vmap(functools.partial(roi_detections.roi_postprocess, max_per_img=20, max_candidates=64)))
  boxes, scores, labels, valid, overflow = f(rois, np.ones((2, 50), bool), logits, deltas, np.array([[100, 120]] * 2))
  assert boxes.shape == (2, 20, 4) and scores.shape == labels.shape == valid.shape == (2, 20) and overflow.shape == (2,)
  assert valid.all() and (np.diff(np.asarray(scores), axis=1) <= 0).all()


def _mmdet_predict(head, cfg, rois, logits, deltas, image_hw):
  import torch  # pylint: disable=g-import-not-at-top
  roi5 = torch.cat([torch.zeros(len(rois), 1), torch.from_numpy(rois)], 1)
  return head.predict_by_feat(rois=(roi5,), cls_scores=(torch.from_numpy(logits),),
                              bbox_preds=(torch.from_numpy(deltas),),
                              batch_img_metas=[dict(img_shape=tuple(int(v) for v in image_hw))],
                              rcnn_test_cfg=cfg, rescale=False)[0]


@pytest.mark.parametrize('ties', [False, True])
def test_equals_mmdet_bbox_head_predict(mmdet, monkeypatch, ties):
  from mmdet.models.layers import bbox_nms  # pylint: disable=g-import-not-at-top
  from mmdet.models.roi_heads.bbox_heads import BBoxHead  # pylint: disable=g-import-not-at-top
  from mmengine.config import ConfigDict  # pylint: disable=g-import-not-at-top
  from tests.structures import reference_nms  # pylint: disable=g-import-not-at-top
  del mmdet
  monkeypatch.setattr(bbox_nms, 'batched_nms', mmcv_batched_nms(reference_nms.nms))
  if ties:
    stable_sort(monkeypatch)
  num_classes, r = 10, 300
  head = BBoxHead(num_classes=num_classes, with_avg_pool=False, in_channels=4, roi_feat_size=1)
  cfg = ConfigDict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)
  rois, logits, deltas = _head_outputs(np.random.default_rng(1 + ties), r, num_classes, ties=ties)
  image_hw = np.array([100, 120])
  valid = np.arange(r) < 260  # the last 40 RoIs are padding: mmdet never sees them
  want = _mmdet_predict(head, cfg, rois[:260], logits[:260], deltas[:260], image_hw)
  boxes, scores, labels, overflow = _unpack(_post(rois, valid, logits, deltas, image_hw, max_candidates=1024))
  assert overflow == 0 and len(scores) == len(want.scores) == 100
  np.testing.assert_array_equal(labels, want.labels.numpy())
  np.testing.assert_allclose(scores, want.scores.numpy(), rtol=1e-6)
  np.testing.assert_allclose(boxes, want.bboxes.numpy(), rtol=1e-6, atol=1e-4)
  if ties:  # the tied copies are suppressed by the first in index order, RoI 0: not by another order
    alone = _unpack(_post(rois[:1], valid[:1], logits[:1], deltas[:1], image_hw))
    np.testing.assert_array_equal(boxes[0], alone[0][0])
    assert labels[0] == 0 and (scores == scores[0]).sum() == 1
    flipped = np.arange(r)
    flipped[::4] = flipped[::4][::-1]  # the tied RoIs in reverse order: another one is kept
    other = _unpack(_post(rois[flipped], valid[flipped], logits[flipped], deltas[flipped], image_hw,
                          max_candidates=1024))
    assert other[1][0] == scores[0] and not np.array_equal(other[0][0], boxes[0])
  # No RoIs, and RoIs that are all padding: no detections (mmdet: empty results).
  assert len(_mmdet_predict(head, cfg, rois[:0], logits[:0], deltas[:0], image_hw).scores) == 0
  assert len(_unpack(_post(rois[:0], valid[:0], logits[:0], deltas[:0], image_hw))[1]) == 0
  assert len(_unpack(_post(rois, np.zeros(r, bool), logits, deltas, image_hw))[1]) == 0
