"""structures.anchors: layout and valid flags by hand, then mmdet 3.3.0's AnchorGenerator as RetinaNet
configures it at odd feature sizes (slow: the reference pass)."""
import jax
import numpy as np
import pytest

from hatnet_jax.structures import anchors

ODD_SIZES = [(13, 17), (7, 9), (4, 5), (2, 3), (1, 2)]


def test_base_anchor_layout_ratio_outer_scale_inner():
  base = anchors.base_anchors(8)
  assert base.shape == (9, 4) and base.dtype == np.float32
  np.testing.assert_array_equal(base[3], [-16, -16, 16, 16])  # ratio 1 (index 1), scale 4 * 2^0 (index 0)
  side = 32 * 2 ** (1 / 3)
  np.testing.assert_allclose(base[4], [-side / 2, -side / 2, side / 2, side / 2], rtol=1e-6)
  w, h = base[0, 2] - base[0, 0], base[0, 3] - base[0, 1]  # ratio 0.5 = h / w, same area as the square
  np.testing.assert_allclose([h / w, w * h], [0.5, 32 * 32], rtol=1e-6)
  np.testing.assert_allclose(anchors.base_anchors(8, center_offset=0.5)[3], [-12, -12, 20, 20])


def test_grid_is_location_major():
  levels = anchors.grid_anchors([(3, 5), (2, 3)], strides=(8, 16))
  assert [a.shape for a in levels] == [(3 * 5 * 9, 4), (2 * 3 * 9, 4)]
  base = anchors.base_anchors(16)
  y, x, a = 1, 2, 7
  np.testing.assert_array_equal(levels[1][(y * 3 + x) * 9 + a], base[a] + [x * 16, y * 16, x * 16, y * 16])
  assert anchors.num_base_anchors() == 9


def test_valid_flags_by_hand():
  pad = np.array([[40, 24], [16, 72]])  # (h, w) per image
  flags = jax.jit(anchors.valid_flags, static_argnums=(0, 1, 3))(((7, 9), (3, 4)), (8, 16), pad, 2)
  assert [f.shape for f in flags] == [(2, 7 * 9 * 2), (2, 3 * 4 * 2)]
  grid = np.asarray(flags[0][0]).reshape(7, 9, 2)
  assert grid[:5, :3].all() and not grid[5:].any() and not grid[:, 3:].any()  # ceil(40/8)=5 rows, 24/8=3 cols
  grid = np.asarray(flags[0][1]).reshape(7, 9, 2)
  assert grid[:2].all() and not grid[2:].any()  # 72/8 = 9 = all columns
  grid = np.asarray(flags[1][0]).reshape(3, 4, 2)
  assert grid[:3, :2].all() and not grid[:, 2:].any()  # ceil(40/16) = 3 rows, ceil(24/16) = 2 cols


def test_levels_and_strides_must_agree():
  with pytest.raises(ValueError, match='one stride per feature level'):
    anchors.grid_anchors([(3, 5)], strides=(8, 16))
  with pytest.raises(ValueError, match=r'valid_hw must be \[B, 2\]'):
    anchors.valid_flags([(3, 5)], (8,), np.array([32, 32]))


def _reference(mmdet):
  from mmdet.models.task_modules.prior_generators import AnchorGenerator  # pylint: disable=g-import-not-at-top
  del mmdet
  return AnchorGenerator(octave_base_scale=4, scales_per_octave=3, ratios=[0.5, 1.0, 2.0],
                         strides=[8, 16, 32, 64, 128])


@pytest.mark.slow
def test_grid_equals_mmdet_grid_priors(mmdet):
  ref = _reference(mmdet)
  want = ref.grid_priors(ODD_SIZES, device='cpu')
  got = anchors.grid_anchors(ODD_SIZES)
  for level, (g, w) in enumerate(zip(got, want)):
    np.testing.assert_array_equal(g, w.numpy(), err_msg=f'level {level}')
  for level, stride in enumerate(anchors.RETINANET_STRIDES):
    np.testing.assert_array_equal(anchors.base_anchors(stride), ref.base_anchors[level].numpy())


@pytest.mark.slow
def test_valid_flags_equal_mmdet(mmdet):
  ref = _reference(mmdet)
  pads = [(100, 132), (97, 133), (64, 96), (8, 1), (200, 300)]  # multiples of 32 or not, beyond the maps
  got = anchors.valid_flags(ODD_SIZES, anchors.RETINANET_STRIDES, np.array(pads), 9)
  for i, pad in enumerate(pads):
    want = ref.valid_flags(ODD_SIZES, pad, device='cpu')
    for level, (g, w) in enumerate(zip(got, want)):
      np.testing.assert_array_equal(g[i], w.numpy(), err_msg=f'pad {pad} level {level}')
