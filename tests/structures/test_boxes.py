"""structures.boxes (and exact.rounded): hand-computed cases, then bit-equality with mmdet's bbox_overlaps
and HorizontalBoxes and torchvision's box_iou (slow: the reference pass of .ci/run)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hatnet_jax.structures import boxes
from hatnet_jax.structures.exact import divide, rounded
from tests.structures.conftest import random_boxes


def test_area_iou_iof_by_hand():
  a = np.array([[0, 0, 10, 10], [20, 20, 30, 40]], np.float32)
  b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [50, 50, 60, 60], [3, 3, 3, 8]], np.float32)
  np.testing.assert_array_equal(boxes.area(a), [100, 200])
  np.testing.assert_allclose(boxes.pairwise_iou(a, b), [[50 / 150, 1, 0, 0], [0, 0, 0, 0]], rtol=1e-7)
  np.testing.assert_allclose(boxes.pairwise_iof(a, b), [[0.5, 1, 0, 0], [0, 0, 0, 0]], rtol=1e-7)
  # Two empty boxes: mmdet's eps makes it 0, not NaN.
  empty = np.array([[4, 4, 4, 4]], np.float32)
  assert float(boxes.pairwise_iou(empty, empty)[0, 0]) == 0.0
  assert boxes.pairwise_iou(np.zeros((0, 4)), a).shape == (0, 2)


def test_iou_broadcasts_over_a_batch_and_jits():
  rng = np.random.default_rng(0)
  a, b = random_boxes(rng, 6).reshape(2, 3, 4), random_boxes(rng, 8).reshape(2, 4, 4)
  batched = jax.jit(boxes.pairwise_iou)(a, b)
  assert batched.shape == (2, 3, 4)
  for i in range(2):
    np.testing.assert_array_equal(batched[i], boxes.pairwise_iou(a[i], b[i]))


def test_clip_flip_scale_by_hand():
  b = np.array([[-5, 2, 50, 70], [10, -1, 20, 8]], np.float32)
  np.testing.assert_array_equal(boxes.clip(b, (60, 40)), [[0, 2, 40, 60], [10, 0, 20, 8]])
  batched = boxes.clip(np.stack([b, b]), np.array([[60, 40], [5, 15]]))
  np.testing.assert_array_equal(batched[1], [[0, 2, 15, 5], [10, 0, 15, 5]])
  np.testing.assert_array_equal(boxes.flip_horizontal(b, 100), [[50, 2, 105, 70], [80, -1, 90, 8]])
  np.testing.assert_array_equal(boxes.scale(b, (2.0, 0.5)), [[-2.5, 4, 25, 140], [5, -2, 10, 16]])


def test_bad_shapes_raise_one_clear_error():
  with pytest.raises(ValueError, match=r'a must have shape \[\.\.\., 4\]'):
    boxes.pairwise_iou(np.zeros((3, 5)), np.zeros((2, 4)))
  with pytest.raises(ValueError, match=r'\(h, w\)'):
    boxes.clip(np.zeros((3, 4)), (1, 2, 3))


def test_products_are_not_fused():
  """XLA would fuse c - a * b into one FMA (rounding once); `rounded` keeps numpy's (= torch's) result."""
  rng = np.random.default_rng(0)
  a, b, c = (rng.random(20000, dtype=np.float32) for _ in range(3))
  np.testing.assert_array_equal(jax.jit(lambda a, b, c: c - rounded(a * b))(a, b, c), c - a * b)
  x = jnp.array([np.nan, 1.0, -np.inf], jnp.float32)
  np.testing.assert_array_equal(rounded(x), x)
  # XLA would turn a division by a broadcast into a multiplication by the reciprocal.
  d = rng.random(200, dtype=np.float32) + 0.5
  np.testing.assert_array_equal(jax.jit(lambda a, d: divide(a.reshape(200, -1), d[:, None]))(a, d),
                                a.reshape(200, -1) / d[:, None])
  # ... by a constant (a guard on the denominator alone is folded away) and under vmap (an unbatched
  # denominator is broadcast outside it): both turned into products by the reciprocal, ~half of them 1 ulp off.
  for c in (np.float32(7), np.float32(14), np.float32(0.3)):
    np.testing.assert_array_equal(jax.jit(lambda a: divide(a, c))(a), a / c)
  row = rng.random(100, dtype=np.float32) + 0.5
  np.testing.assert_array_equal(jax.jit(jax.vmap(divide, in_axes=(0, None)))(a.reshape(200, 100), row),
                                a.reshape(200, 100) / row)
  # The IoUs, step by step in float32 numpy as mmdet's torch ops round them.
  p, q = random_boxes(rng, 300), random_boxes(rng, 200)
  area_p = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1])
  area_q = (q[:, 2] - q[:, 0]) * (q[:, 3] - q[:, 1])
  wh = np.maximum(np.minimum(p[:, None, 2:], q[None, :, 2:]) - np.maximum(p[:, None, :2], q[None, :, :2]), 0)
  overlap = wh[..., 0] * wh[..., 1]
  union = np.maximum(area_p[:, None] + area_q[None, :] - overlap, np.float32(1e-6))
  np.testing.assert_array_equal(jax.jit(boxes.pairwise_iou)(p, q), overlap / union)


def _mixed_boxes(rng):
  """Random boxes plus the hard cases: identical, zero-area (point and line), disjoint, touching."""
  special = np.array([[10, 10, 30, 30], [10, 10, 30, 30], [15, 15, 15, 15], [12, 12, 40, 12], [90, 90, 99, 99],
                      [30, 10, 50, 30], [0, 0, 0.5, 0.25]], np.float32)
  return np.concatenate([random_boxes(rng, 60), special])


@pytest.mark.slow
def test_iou_and_iof_equal_mmdet_bit_for_bit(mmdet):
  import torch  # pylint: disable=g-import-not-at-top
  from mmdet.structures.bbox import bbox_overlaps  # pylint: disable=g-import-not-at-top
  del mmdet
  rng = np.random.default_rng(1)
  a, b = _mixed_boxes(rng), _mixed_boxes(rng)[::-1].copy()
  for mode, ours in (('iou', boxes.pairwise_iou), ('iof', boxes.pairwise_iof)):
    want = bbox_overlaps(torch.from_numpy(a), torch.from_numpy(b), mode=mode).numpy()
    np.testing.assert_array_equal(jax.jit(ours)(a, b), want, err_msg=mode)
  assert bbox_overlaps(torch.zeros(0, 4), torch.from_numpy(b)).shape == boxes.pairwise_iou(np.zeros((0, 4)), b).shape


@pytest.mark.slow
def test_iou_equals_torchvision_box_iou(tv_ops):
  import torch  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(2)
  a, b = random_boxes(rng, 200), random_boxes(rng, 150)
  b[:20] = a[:20]  # identical pairs
  want = tv_ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
  np.testing.assert_array_equal(jax.jit(boxes.pairwise_iou)(a, b), want)
  assert (want == 0).sum() > 1000  # many disjoint pairs


@pytest.mark.slow
def test_clip_flip_scale_equal_mmdet_horizontal_boxes(mmdet):
  import torch  # pylint: disable=g-import-not-at-top
  from mmdet.structures.bbox import HorizontalBoxes, scale_boxes  # pylint: disable=g-import-not-at-top
  del mmdet
  rng = np.random.default_rng(3)
  b = (random_boxes(rng, 50, size=140) - 20).astype(np.float32)
  ref = HorizontalBoxes(torch.from_numpy(b.copy()))
  ref.clip_((77, 101))
  np.testing.assert_array_equal(boxes.clip(b, (77, 101)), ref.tensor.numpy())
  ref = HorizontalBoxes(torch.from_numpy(b.copy()))
  ref.flip_((77, 101), direction='horizontal')
  np.testing.assert_array_equal(boxes.flip_horizontal(b, 101), ref.tensor.numpy())
  want = scale_boxes(torch.from_numpy(b.copy()), (0.75, 1.6))  # mmdet's factor is (w, h)
  np.testing.assert_array_equal(boxes.scale(b, (1.6, 0.75)), want.numpy())
