"""structures.proposals: a hand-made case (top nms_pre per level, level-wise NMS, the min-size filter,
anchor flags), errors, jit/vmap; then mmdet 3.3.0's RPNHead.predict_by_feat on random maps.

mmdet's NMS is mmcv's compiled batched_nms (absent from mmcv-lite): `mmcv_batched_nms` below is mmcv
2.1's algorithm (boxes offset by label * (max + 1); one NMS below split_thr 10000, else NMS per label and
an unstable sort of the kept scores) over the transcription of the kernel (tests/structures/reference_nms.py;
mmcv's CPU kernel is the same loop with the threshold as a float, the same decisions for 0.5 and 0.7).
Ties: mmdet sorts with torch's unstable sort; the tie test makes torch.Tensor.sort stable, which gives
mmdet's computation in the order proposals.py states (ties by index).
"""
import functools

import jax
import numpy as np
import pytest

from hatnet_jax.structures import anchors as anchor_lib
from hatnet_jax.structures import proposals

SIZES = ((32, 40), (16, 20), (8, 10), (4, 5), (2, 3))  # a 128 x 160 padded canvas, strides 4 .. 64


def mmcv_batched_nms(nms):
  """mmcv 2.1's ops.batched_nms for horizontal boxes (split_thr 10000), over `nms` (boxes, scores, iou)."""
  import torch  # pylint: disable=g-import-not-at-top

  def batched_nms(boxes, scores, idxs, nms_cfg, class_agnostic=False):
    cfg = dict(nms_cfg)
    assert cfg.pop('type', 'nms') == 'nms' and not cfg.pop('class_agnostic', class_agnostic)
    iou, split_thr = cfg.pop('iou_threshold'), cfg.pop('split_thr', 10000)
    shifted = boxes + (idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes)))[:, None]
    if shifted.shape[0] < split_thr:
      keep = nms(shifted, scores, iou)
    else:
      mask = torch.zeros_like(scores, dtype=torch.bool)
      for label in torch.unique(idxs):
        members = (idxs == label).nonzero().view(-1)
        mask[members[nms(shifted[members], scores[members], iou)]] = True
      keep = mask.nonzero().view(-1)
      keep = keep[scores[keep].sort(descending=True)[1]]
    return torch.cat([boxes[keep], scores[keep][:, None]], -1), keep

  return batched_nms


def stable_sort(monkeypatch):
  """torch.Tensor.sort made stable (ties in index order) for mmdet's and the NMS kernel's sorts."""
  import torch  # pylint: disable=g-import-not-at-top
  plain = torch.sort

  def sort(self, dim=-1, descending=False, stable=True):
    del stable
    return plain(self, dim=dim, descending=descending, stable=True)

  monkeypatch.setattr(torch.Tensor, 'sort', sort)


def _hand_level0():
  anchors = np.array([[0, 0, 10, 10], [2, 0, 12, 10], [30, 30, 40, 40]], np.float32)  # IoU(0, 1) = 80 / 120
  return np.array([2.0, 1.0, 5.0], np.float32).reshape(1, 3, 1), np.zeros((1, 3, 4), np.float32), anchors


@functools.lru_cache(maxsize=None)
def _hand_jit(nms_pre, iou, max_per_img):
  return jax.jit(lambda c, d, a, v: proposals.rpn_proposals(c, d, a, np.array([20, 20]), nms_pre, max_per_img, iou,
                                                            anchor_valid=v))


def _run(nms_pre, iou, valid=None, max_per_img=4):
  logits0, deltas0, anchors0 = _hand_level0()
  level1 = (np.full((1, 1, 1), 0.5, np.float32), np.zeros((1, 1, 4), np.float32),
            np.array([[0, 0, 10, 10]], np.float32))  # anchor 0's box on another level: never suppressed by it
  if valid is None:
    valid = [np.ones(3, bool), np.ones(1, bool)]
  boxes, scores, ok = _hand_jit(nms_pre, iou, max_per_img)([logits0, level1[0]], [deltas0, level1[1]],
                                                           [anchors0, level1[2]], valid)
  n = int(ok.sum())
  assert ok.tolist() == [True] * n + [False] * (max_per_img - n)
  assert not np.asarray(boxes)[n:].any() and not np.asarray(scores)[n:].any()
  return np.asarray(boxes)[:n].tolist(), np.asarray(scores)[:n]


def test_by_hand():
  sig = lambda x: 1 / (1 + np.exp(-x))  # pylint: disable=unnecessary-lambda-assignment
  # anchor 2 (best score) lies outside the 20 x 20 image: clipped to a point, dropped by min_bbox_size 0.
  # nms_pre 2 keeps anchors 2 and 0 of level 0: anchor 1 is not a candidate.
  boxes, scores = _run(nms_pre=2, iou=0.7)
  assert boxes == [[0, 0, 10, 10], [0, 0, 10, 10]]
  np.testing.assert_allclose(scores, sig(np.array([2.0, 0.5])), rtol=1e-6)
  boxes, scores = _run(nms_pre=3, iou=0.7)  # IoU 0.667 <= 0.7: anchor 1 stays, ordered by score
  assert boxes == [[0, 0, 10, 10], [2, 0, 12, 10], [0, 0, 10, 10]]
  boxes, _ = _run(nms_pre=-1, iou=0.6)  # nms_pre <= 0 keeps all; now anchor 0 suppresses anchor 1
  assert boxes == [[0, 0, 10, 10], [0, 0, 10, 10]]
  boxes, scores = _run(nms_pre=3, iou=0.6, valid=[np.array([False, True, True]), np.array([True])])
  assert boxes == [[2, 0, 12, 10], [0, 0, 10, 10]]  # anchor 0 flagged off: anchor 1 is not suppressed
  np.testing.assert_allclose(scores, sig(np.array([1.0, 0.5])), rtol=1e-6)
  boxes, _ = _run(nms_pre=3, iou=0.7, max_per_img=2)
  assert boxes == [[0, 0, 10, 10], [2, 0, 12, 10]]
  boxes, _ = _run(nms_pre=3, iou=0.6, valid=[np.zeros(3, bool), np.zeros(1, bool)])
  assert boxes == []  # every anchor flagged off: no proposal


def test_errors_name_the_input():
  logits, deltas, anchors = _hand_level0()
  with pytest.raises(ValueError, match='one objectness map, delta map and anchor set per level'):
    proposals.rpn_proposals([logits], [deltas, deltas], [anchors], np.array([9, 9]), 10, 5)
  with pytest.raises(ValueError, match=r'level 0: objectness must be \[H, W, A\] and deltas \[H, W, A \* 4\]'):
    proposals.rpn_proposals([logits], [deltas[..., :2]], [anchors], np.array([9, 9]), 10, 5)
  with pytest.raises(ValueError, match=r'level 0: anchors must be \[H \* W \* A, 4\]'):
    proposals.rpn_proposals([logits], [deltas], [anchors[:2]], np.array([9, 9]), 10, 5)
  with pytest.raises(ValueError, match=r'image_hw must be \(h, w\) of one image'):
    proposals.rpn_proposals([logits], [deltas], [anchors], np.array([[9, 9]]), 10, 5)
  with pytest.raises(ValueError, match=r'level 0: anchor_valid must be \[H \* W \* A\]'):
    proposals.rpn_proposals([logits], [deltas], [anchors], np.array([9, 9]), 10, 5, anchor_valid=[np.ones(2, bool)])


def rpn_anchors(sizes=SIZES):
  return anchor_lib.grid_anchors(sizes, strides=proposals.RPN_STRIDES, octave_base_scale=8, scales_per_octave=1)


def _maps(rng, batch, ties=False):
  """Per level (objectness [B, H, W, 3], deltas [B, H, W, 12]). Logits: one shuffled linspace over all
  levels (no ties), or rounded to 1/4 (ties everywhere)."""
  counts = [batch * h * w * 3 for h, w in SIZES]
  logits = np.linspace(-5.0, 5.0, sum(counts), dtype=np.float32)[rng.permutation(sum(counts))]
  if ties:
    logits = np.round(logits * 4) / 4
  cls = [p.reshape(batch, h, w, 3) for p, (h, w) in zip(np.split(logits, np.cumsum(counts)[:-1]), SIZES)]
  box = [rng.normal(0, 0.5, (batch, h, w, 12)).astype(np.float32) for h, w in SIZES]
  return cls, box


def _jitted(**cfg):
  per_image = functools.partial(proposals.rpn_proposals, **cfg)
  return jax.jit(jax.vmap(lambda c, d, hw: per_image(c, d, rpn_anchors(), hw)))


def test_jits_and_vmaps():
  cls, box = _maps(np.random.default_rng(0), 2)
  boxes, scores, valid = _jitted(nms_pre=200, max_per_img=300)(cls, box, np.array([[128, 160], [100, 90]]))
  assert boxes.shape == (2, 300, 4) and scores.shape == valid.shape == (2, 300)
  for i, (h, w) in enumerate([(128, 160), (100, 90)]):
    n = int(valid[i].sum())
    b = np.asarray(boxes[i, :n])
    assert 0 < n <= 300 and (np.diff(np.asarray(scores[i, :n])) <= 0).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all() and b[:, 2].max() <= w and b[:, 3].max() <= h


@pytest.mark.parametrize('ties,nms_pre,max_per_img', [(False, 1000, 1000), (False, 2000, 1000),
                                                      (False, 500, 300), (True, 1000, 1000)])
def test_equals_mmdet_rpn_head(mmdet, monkeypatch, ties, nms_pre, max_per_img):
  import torch  # pylint: disable=g-import-not-at-top
  from mmdet.models.dense_heads import RPNHead  # pylint: disable=g-import-not-at-top
  from mmdet.models.dense_heads import rpn_head  # pylint: disable=g-import-not-at-top
  from mmengine.config import ConfigDict  # pylint: disable=g-import-not-at-top
  from tests.structures import reference_nms  # pylint: disable=g-import-not-at-top
  del mmdet
  monkeypatch.setattr(rpn_head, 'batched_nms', mmcv_batched_nms(reference_nms.nms))
  if ties:
    stable_sort(monkeypatch)
  head = RPNHead(in_channels=4, anchor_generator=dict(type='AnchorGenerator', scales=[8], ratios=[0.5, 1.0, 2.0],
                                                      strides=list(proposals.RPN_STRIDES)))
  priors = head.prior_generator.grid_priors(SIZES, device='cpu')
  for mine, theirs in zip(rpn_anchors(), priors):
    np.testing.assert_array_equal(mine, theirs.numpy())
  cfg = ConfigDict(nms_pre=nms_pre, max_per_img=max_per_img, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0)
  cls, box = _maps(np.random.default_rng(1 + ties), 3, ties=ties)
  image_hw = np.array([[128, 160], [97, 160], [128, 61]])  # padding below / right: anchors there clip away
  def nchw(maps):
    return [torch.from_numpy(np.ascontiguousarray(m.transpose(0, 3, 1, 2))) for m in maps]

  want = head.predict_by_feat(nchw(cls), nchw(box),
                              batch_img_metas=[dict(img_shape=tuple(int(v) for v in hw)) for hw in image_hw],
                              cfg=cfg, rescale=False)
  boxes, scores, valid = _jitted(nms_pre=nms_pre, max_per_img=max_per_img)(cls, box, image_hw)
  for i in range(3):
    n = int(valid[i].sum())
    assert n == len(want[i].scores) and 0 < n <= max_per_img, (i, n, len(want[i].scores))
    assert valid[i, :n].all()
    np.testing.assert_allclose(scores[i, :n], want[i].scores.numpy(), rtol=1e-6)
    np.testing.assert_allclose(boxes[i, :n], want[i].bboxes.numpy(), rtol=1e-6, atol=1e-4)
