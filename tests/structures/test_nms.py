"""structures.nms: hand cases, padding, vmap; then torchvision.ops.nms / batched_nms kept indices, in
order, on clustered boxes with tied scores (slow: the reference pass).

Ties: torchvision's CPU kernel sorts with the unstable `scores.sort(descending=True)`, stable only up to
16 boxes (`test_torchvision_tie_order_is_index_order_up_to_16_boxes`). For more boxes with tied scores the
reference is torchvision run on scores replaced by their stable descending rank (distinct, same order for
distinct scores), i.e. torchvision's arithmetic with ties in index order.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hatnet_jax.structures import nms as nms_lib

THRESHOLDS = (0.3, 0.5, 0.7)


def _clustered(rng, n, ties=True, integer=False):
  """Boxes in tight clusters (heavy overlaps, some exact duplicates); scores with many ties."""
  centers = rng.uniform(30, 170, (max(1, n // 10), 2))
  c = centers[rng.integers(0, len(centers), n)] + rng.normal(0, 4, (n, 2))
  wh = rng.uniform(8, 40, (n, 2))
  boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1)
  boxes = np.round(boxes) if integer else boxes
  boxes = boxes.astype(np.float32)
  dup = rng.integers(0, n, n // 10)
  boxes[dup] = boxes[rng.integers(0, n, len(dup))]
  scores = rng.random(n).astype(np.float32)
  if ties:
    scores = (np.round(scores * 8) / 8).astype(np.float32)
  return boxes, scores


def _rank_scores(scores):
  """Distinct float32 scores in the stable descending order of `scores`."""
  order = np.argsort(-scores, kind='stable')
  ranked = np.empty(len(scores), np.float32)
  ranked[order] = np.arange(len(scores), 0, -1)
  return ranked


@functools.partial(jax.jit, static_argnums=(2, 3))
def _nms(boxes, scores, threshold, max_output, valid=None):
  return nms_lib.nms(boxes, scores, threshold, max_output, valid)


def _kept(result):
  index, valid = (np.asarray(x) for x in result)
  assert valid.tolist() == sorted(valid.tolist(), reverse=True)  # the kept rows come first
  return index[valid].tolist()


def test_nms_by_hand():
  boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
  scores = np.array([0.9, 0.8, 0.7, 0.95], np.float32)
  assert _kept(_nms(boxes, scores, 0.5, 4)) == [3, 2]  # 3 suppresses its duplicate 0 and 1 (IoU 90/110)
  assert _kept(_nms(boxes, scores, 0.85, 4)) == [3, 1, 2]  # IoU(3, 1) = 0.818 stays
  assert _kept(_nms(boxes, scores, 0.5, 1)) == [3]
  index, valid = _nms(boxes, scores, 0.5, 6)
  assert index.shape == (6,) and index.dtype == jnp.int32 and valid.tolist() == [True] * 2 + [False] * 4
  assert index[2:].tolist() == [0] * 4


def test_padding_is_never_kept_and_suppresses_nothing():
  boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 9, 9]], np.float32)
  scores = np.array([0.5, -np.inf, 0.9, 0.4], np.float32)
  valid = np.array([True, True, False, True])
  assert _kept(_nms(boxes, scores, 0.5, 4, valid)) == [0]  # 2 (masked) and 1 (-inf) do not suppress 0
  assert _kept(_nms(boxes, np.full(4, -np.inf, np.float32), 0.5, 4)) == []
  assert _kept(nms_lib.nms(np.zeros((0, 4)), np.zeros((0,)), 0.5, 3)) == []


def test_threshold_compares_as_torchvision_double():
  for t in (0.3, 0.5, 0.7, 0.1, 1 / 3):
    below = nms_lib._threshold_below(t)  # pylint: disable=protected-access
    for x in (np.float32(t), np.nextafter(np.float32(t), np.float32(1)), np.nextafter(np.float32(t), np.float32(0))):
      assert (x > below) == (float(x) > t), (t, x)
  with pytest.raises(ValueError, match='static Python number'):
    nms_lib.nms(np.zeros((2, 4)), np.zeros(2), jnp.float32(0.5), 2)


def test_vmap_equals_one_by_one():
  rng = np.random.default_rng(0)
  data = [_clustered(rng, 40) for _ in range(3)]
  boxes, scores = (np.stack(x) for x in zip(*data))
  valid = rng.random((3, 40)) > 0.2
  labels = rng.integers(0, 3, (3, 40))
  batched = jax.jit(jax.vmap(lambda b, s, v: nms_lib.nms(b, s, 0.5, 20, v)))(boxes, scores, valid)
  per_class = jax.vmap(lambda b, s, l, v: nms_lib.batched_nms(b, s, l, 0.5, 20, v))(boxes, scores, labels, valid)
  for i in range(3):
    np.testing.assert_array_equal(batched[0][i], nms_lib.nms(boxes[i], scores[i], 0.5, 20, valid[i])[0])
    np.testing.assert_array_equal(batched[1][i], nms_lib.nms(boxes[i], scores[i], 0.5, 20, valid[i])[1])
    one = nms_lib.batched_nms(boxes[i], scores[i], labels[i], 0.5, 20, valid[i])
    np.testing.assert_array_equal(per_class[0][i], one[0])


def test_batched_never_suppresses_across_labels():
  boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [-11, -11, -1, -1], [0, 0, 10, 10]], np.float32)
  scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
  labels = np.array([0, 1, 1, 0])
  # Offset by 1 * (10 + 1), box 2 lands exactly on box 0: torchvision's trick alone would suppress it.
  assert _kept(nms_lib.batched_nms(boxes, scores, labels, 0.5, 4)) == [0, 1, 2]


def _reference(ref, boxes, scores, threshold, valid=None, labels=None, public=True):
  import torch  # pylint: disable=g-import-not-at-top
  idx = np.arange(len(scores)) if valid is None else np.nonzero(valid)[0]
  b, s = torch.from_numpy(boxes[idx]), torch.from_numpy(scores[idx])
  if labels is None:
    keep = ref.nms(b, s, threshold)
  elif public:
    keep = ref.batched_nms(b, s, torch.from_numpy(labels[idx]), threshold)
  else:  # the offset-trick path torchvision takes for <= 1000 boxes on CPU, and mmcv's batched_nms always
    keep = ref.coordinate_trick(b, s, torch.from_numpy(labels[idx]), threshold)
  return idx[keep.numpy()].tolist()


@pytest.mark.slow
def test_torchvision_tie_order_is_index_order_up_to_16_boxes(nms_reference):
  rng = np.random.default_rng(1)
  for n in (2, 7, 16):
    for threshold in THRESHOLDS:
      boxes, scores = _clustered(rng, n)
      scores[1] = scores[0]  # at least one tie
      assert _kept(_nms(boxes, scores, threshold, n)) == _reference(nms_reference, boxes, scores, threshold)


@pytest.mark.slow
def test_torch_descending_sort_leaves_ties_unordered_beyond_16():
  """Why the references get rank scores for ties: the kernel's sort is stable only up to 16 elements."""
  torch = pytest.importorskip('torch')
  tied = torch.tensor([1.0, 0.0] * 20)
  stable = tied.sort(dim=0, descending=True, stable=True)[1]
  assert torch.equal(tied[:16].sort(0, descending=True)[1], tied[:16].sort(dim=0, descending=True, stable=True)[1])
  assert not torch.equal(tied.sort(0, descending=True)[1], stable)


@pytest.mark.slow
@pytest.mark.parametrize('n', [0, 1, 7, 300, 2000])
def test_nms_equals_torchvision(nms_reference, n):
  rng = np.random.default_rng(n)
  for threshold in THRESHOLDS:
    if n == 0:  # 50 boxes, none valid
      boxes, scores = _clustered(rng, 50)
      valid = np.zeros(50, bool)
      want = _reference(nms_reference, boxes, scores, threshold, valid)
      assert _kept(_nms(boxes, scores, threshold, 50, valid)) == want == []
      continue
    boxes, scores = _clustered(rng, n)
    valid = rng.random(n) > 0.1
    want = _reference(nms_reference, boxes, _rank_scores(scores), threshold, valid)
    assert _kept(_nms(boxes, scores, threshold, n, valid)) == want
    assert _kept(_nms(boxes, scores, threshold, 5, valid)) == want[:5]
    distinct = rng.permutation(n).astype(np.float32) / n  # no ties: torchvision's own order
    assert _kept(_nms(boxes, distinct, threshold, n)) == _reference(nms_reference, boxes, distinct, threshold)


@pytest.mark.slow
@pytest.mark.parametrize('n', [7, 300, 1000])
def test_batched_nms_equals_torchvision_offset_path(nms_reference, n):
  rng = np.random.default_rng(10 + n)
  for threshold in THRESHOLDS:
    boxes, scores = _clustered(rng, n)
    labels = rng.integers(0, 5, n)
    valid = rng.random(n) > 0.1
    ranked = _rank_scores(scores)
    got = _kept(nms_lib.batched_nms(boxes, scores, labels, threshold, n, valid))
    assert got == _reference(nms_reference, boxes, ranked, threshold, valid, labels, public=False)
    if n <= 1000:  # torchvision.ops.batched_nms itself takes the offset path here
      assert got == _reference(nms_reference, boxes, ranked, threshold, valid, labels)


@pytest.mark.slow
def test_batched_nms_equals_torchvision_per_class_path(nms_reference):
  """2000 boxes: torchvision runs NMS per class on unshifted boxes. Integer coordinates make the shifted
  and unshifted IoUs identical, so the two paths must agree exactly."""
  rng = np.random.default_rng(3)
  boxes, scores = _clustered(rng, 2000, integer=True)
  labels = rng.integers(0, 6, 2000)
  ranked = _rank_scores(scores)
  for threshold in THRESHOLDS:
    got = _kept(nms_lib.batched_nms(boxes, scores, labels, threshold, 2000))
    assert got == _reference(nms_reference, boxes, ranked, threshold, labels=labels)
