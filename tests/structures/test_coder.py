"""structures.coder: hand-computed deltas and mmdet's own docstring example, then mmdet 3.3.0's
DeltaXYWHBBoxCoder on random inputs (slow: the reference pass)."""
import math

import jax
import numpy as np
import pytest

from hatnet_jax.structures import coder
from tests.structures.conftest import random_boxes


def test_encode_by_hand_and_round_trip():
  anchors = np.array([[0, 0, 10, 10], [4, 4, 8, 12]], np.float32)
  gt = np.array([[5, 5, 25, 15], [4, 4, 8, 12]], np.float32)
  np.testing.assert_allclose(coder.encode(anchors, gt), [[1, 0.5, math.log(2), 0], [0, 0, 0, 0]], atol=1e-7)
  deltas = coder.encode(anchors, gt, means=(0.1, 0, 0, -0.1), stds=(0.5, 0.5, 2, 2))
  np.testing.assert_allclose(deltas[0], [1.8, 1.0, math.log(2) / 2, 0.05], rtol=1e-6)
  np.testing.assert_allclose(coder.decode(anchors, deltas, (0.1, 0, 0, -0.1), (0.5, 0.5, 2, 2)), gt, rtol=1e-6)


def test_decode_mmdet_docstring_example():
  rois = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [5, 5, 5, 5]], np.float32)
  deltas = np.array([[0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 2, -1], [0.7, -1.9, -0.5, 0.3]], np.float32)
  want = [[0, 0, 1, 1], [0.1409, 0.1409, 2.8591, 2.8591], [0, 0.3161, 4.1945, 0.6839], [5, 5, 5, 5]]
  np.testing.assert_allclose(coder.decode(rois, deltas, max_shape=(32, 32)), want, atol=1e-4)


def test_decode_clamps_the_size_change_and_clips_per_image():
  anchors = np.array([[0, 0, 10, 10]], np.float32)
  out = coder.decode(anchors, np.array([[0, 0, 50.0, -50.0]], np.float32))
  np.testing.assert_allclose(out, [[5 - 312.5, 5 - 0.08, 5 + 312.5, 5 + 0.08]], rtol=1e-6)  # 1000/16 = 62.5x
  batched = jax.jit(coder.decode)(np.stack([anchors, anchors]), np.array([[[0, 0, 3.0, 3.0]]] * 2, np.float32),
                                  max_shape=np.array([[100, 60], [8, 9]]))
  side = 10 * math.exp(3) / 2
  assert side > 100
  np.testing.assert_allclose(batched, [[[0, 0, 60, 100]], [[0, 0, 9, 8]]], rtol=1e-6)


def test_bad_deltas_raise_one_clear_error():
  with pytest.raises(ValueError, match=r'class-specific deltas'):
    coder.decode(np.zeros((3, 4)), np.zeros((3, 8)))
  with pytest.raises(ValueError, match='stds must hold 4 numbers'):
    coder.encode(np.zeros((3, 4)), np.ones((3, 4)), stds=(1, 1))


def _positive_boxes(rng, n):
  return random_boxes(rng, n, size=300, max_side=120)


@pytest.mark.slow
def test_encode_decode_equal_mmdet(mmdet):
  import torch  # pylint: disable=g-import-not-at-top
  from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder  # pylint: disable=g-import-not-at-top
  del mmdet
  rng = np.random.default_rng(0)
  anchors, gt = _positive_boxes(rng, 500), _positive_boxes(rng, 500)
  for means, stds in (((0., 0., 0., 0.), (1., 1., 1., 1.)), ((0.1, -0.2, 0.05, 0.), (0.1, 0.1, 0.2, 0.2))):
    ref = DeltaXYWHBBoxCoder(target_means=means, target_stds=stds)
    want = ref.encode(torch.from_numpy(anchors), torch.from_numpy(gt)).numpy()
    np.testing.assert_allclose(jax.jit(coder.encode, static_argnums=(2, 3))(anchors, gt, means, stds), want,
                               rtol=1e-5, atol=1e-6)
    deltas = rng.normal(0, 1.5, (500, 4)).astype(np.float32)
    deltas[:50, 2:] = rng.choice([-30.0, 30.0, 1e4, -1e4], (50, 2))  # past the clamp
    for max_shape in (None, (211, 187)):
      want = ref.decode(torch.from_numpy(anchors), torch.from_numpy(deltas), max_shape=max_shape).numpy()
      got = coder.decode(anchors, deltas, means, stds, max_shape=max_shape)
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4, err_msg=f'{means} {max_shape}')
      if max_shape:
        assert (want == 0).any() and (want == max_shape[1]).any()  # the clip is exercised
