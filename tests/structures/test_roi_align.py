"""structures.roi_align: hand cases (the transcription of torchvision's CPU kernel and the JAX version),
then values and feature gradients against the transcription (tests/structures/reference_roi_align.py) on
boxes crossing every border, outside, sub-pixel and large; windows and their overflow count; jit + vmap;
mmdet's level rule; the multi-level extraction against a loop of per-level reference calls."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hatnet_jax.structures import roi_align as ra
from tests.structures import reference_roi_align as ref

TOL = 1e-5


def _nchw(feature):
  return np.asarray(feature, np.float32).transpose(2, 0, 1)[None]


def _ref(feature, boxes, output_size, scale, sampling_ratio=0, aligned=True):
  """The transcription on one NHWC image: [R, oh, ow, C]."""
  rois = np.concatenate([np.zeros((len(boxes), 1)), boxes], axis=1).astype(np.float32)
  out = ref.roi_align_forward(_nchw(feature), rois, output_size, scale, sampling_ratio, aligned, 'float64')
  return out.transpose(0, 2, 3, 1)


def _ref_grad(cotangent, boxes, shape, scale, sampling_ratio=0, aligned=True):
  rois = np.concatenate([np.zeros((len(boxes), 1)), boxes], axis=1).astype(np.float32)
  grad = ref.roi_align_backward(np.asarray(cotangent, np.float32).transpose(0, 3, 1, 2), rois,
                                (1, shape[2], shape[0], shape[1]), scale, sampling_ratio, aligned)
  return grad[0].transpose(1, 2, 0)


def _boxes(rng, height, width, scale, n=40):
  """Boxes (input pixels) of every kind for a height x width map at `scale`: inside, crossing each
  border, entirely outside on each side, sub-pixel, larger than the map, zero-size, flipped."""
  h, w = height / scale, width / scale
  inside = np.concatenate([rng.uniform(0, [w / 2, h / 2], (n, 2)), rng.uniform(0, [w / 2, h / 2], (n, 2))], 1)
  inside[:, 2:] += inside[:, :2]
  crossing = np.concatenate([rng.uniform(-w / 3, w, (n, 2)), rng.uniform(1, w / 2, (n, 2))], 1)
  crossing[:, 2:] += crossing[:, :2]
  outside = np.array([[-9 * w, 0, -2 * w, h], [0, -9 * h, w, -2 * h], [2 * w, 0, 9 * w, h], [0, 2 * h, w, 9 * h],
                      [w + 0.2 / scale, 1, w + 5, 9], [1, h + 0.6 / scale, 9, h + 7]])
  tiny = np.concatenate([rng.uniform(0, [w, h], (8, 2)), rng.uniform(0.001, 0.6, (8, 2)) / scale], 1)
  tiny[:, 2:] += tiny[:, :2]
  large = np.array([[-w, -h, 2 * w, 2 * h], [-0.5 * w, 0.1 * h, 1.7 * w, 0.9 * h], [0, 0, w, h], [3, 3, 3, 9],
                    [5, 5, 4, 4]])
  return np.concatenate([inside, crossing, outside, tiny, large]).astype(np.float32)


def test_reference_by_hand():
  """Hand-computed RoIAlign values (and one gradient) for the transcription and the JAX version."""
  linear = (4 * np.arange(4)[:, None] + np.arange(4)[None, :]).astype(np.float32)[..., None]
  ones = np.ones((4, 4, 1), np.float32)
  cases = [
      # Samples at (0.5, 0.5), (0.5, 1.5), ...: the bilinear mean of 4y + x is its value at the centre (1, 1).
      (linear, [0.5, 0.5, 2.5, 2.5], 5.0),
      # x samples at -4 .. 3: -4, -3, -2 are < -1 (weight 0), -1 clamps to 0; y samples 0 .. 3: 5 / 8.
      (ones, [-4, 0, 4, 4], 0.625),
      # y samples at 3.5 (clamped to row 3) and 4.5 (> H: weight 0); x samples 0 .. 3.
      (ones, [0, 3.5, 4, 5.5], 0.5),
      (ones, [5.2, 0, 9, 4], 0.0),  # x samples >= 5.2 > W: entirely outside
      (ones, [1, 1, 1, 3], 0.0),  # zero width: an empty grid gives 0, not NaN
  ]
  fn = jax.jit(lambda f, b: ra.roi_align(f, b, (1, 1), 1.0)[0, 0, 0, 0])
  for feature, box, want in cases:
    box = np.asarray([box], np.float32)
    assert _ref(feature, box, (1, 1), 1.0)[0, 0, 0, 0] == pytest.approx(want, abs=1e-6), box
    assert float(fn(feature, box)) == pytest.approx(want, abs=1e-6), box
  # d(out)/d(feature) for the second case: x weights 2, 1, 1, 1 (col 0 takes -1 and 0) per row, / 32.
  want = np.tile(np.array([2, 1, 1, 1], np.float32) / 32, (4, 1))[..., None]
  box = np.asarray([[-4, 0, 4, 4]], np.float32)
  np.testing.assert_allclose(_ref_grad(np.ones((1, 1, 1, 1)), box, ones.shape, 1.0), want, atol=1e-7)
  np.testing.assert_allclose(jax.jit(jax.grad(fn))(ones, box), want, atol=1e-7)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _value_and_vjp(feature, boxes, output_size, scale, sampling_ratio, aligned, window, cotangent):
  fn = lambda f: ra.roi_align_with_overflow(f, boxes, output_size, scale, sampling_ratio, aligned, window)[0]
  out, vjp = jax.vjp(fn, feature)
  return out, vjp(cotangent)[0]


@pytest.mark.parametrize('output_size,scale,sampling_ratio,aligned,channels', [
    pytest.param((7, 7), 1.0, 0, True, 3, marks=pytest.mark.slow),
    ((7, 7), 0.25, 0, True, 3),
    ((14, 14), 0.5, 0, True, 2),
    ((3, 5), 0.125, 2, True, 2),
    pytest.param((7, 7), 1.0, 0, False, 2, marks=pytest.mark.slow),
    ((28, 28), 1.0, 0, True, 1),  # a 1-channel mask, Mask R-CNN's target size
])
def test_matches_reference(output_size, scale, sampling_ratio, aligned, channels):
  rng = np.random.default_rng(hash((output_size, scale, sampling_ratio, aligned)) % 2**32)
  height, width = 13, 19
  feature = rng.normal(size=(height, width, channels)).astype(np.float32)
  if channels == 1:
    feature = (feature > 0).astype(np.float32)
  boxes = _boxes(rng, height, width, scale)
  want = _ref(feature, boxes, output_size, scale, sampling_ratio, aligned)
  cotangent = rng.normal(size=want.shape).astype(np.float32)
  want_grad = _ref_grad(cotangent, boxes, feature.shape, scale, sampling_ratio, aligned)
  out, grad = _value_and_vjp(feature, boxes, output_size, scale, sampling_ratio, aligned, None, cotangent)
  np.testing.assert_allclose(out, want, atol=TOL)
  np.testing.assert_allclose(grad, want_grad, atol=TOL, rtol=1e-6)  # sums of many cotangents: ~30 here


def _support(boxes, shape, output_size, scale, sampling_ratio):
  """[R] rows and columns each RoI's samples weigh (from the reference backward with unit cotangent)."""
  spans = []
  for box in boxes:
    grad = _ref_grad(np.ones((1,) + output_size + (1,)), box[None], shape[:2] + (1,), scale, sampling_ratio)
    rows, cols = np.nonzero(grad[..., 0] > 0)
    spans.append((np.ptp(rows) + 1, np.ptp(cols) + 1) if len(rows) else (0, 0))
  return np.array(spans)


@pytest.mark.parametrize('window,scale', [((6, 8), 1.0), pytest.param((4, 4), 0.5, marks=pytest.mark.slow),
                                          pytest.param((13, 3), 0.25, marks=pytest.mark.slow)])
def test_window_exact_when_it_fits_and_counts_the_rest(window, scale):
  rng = np.random.default_rng(7)
  height, width = 13, 19
  feature = rng.normal(size=(height, width, 2)).astype(np.float32)
  boxes = _boxes(rng, height, width, scale, n=20)
  want = _ref(feature, boxes, (7, 7), scale)
  cotangent = rng.normal(size=want.shape).astype(np.float32)
  span = _support(boxes, feature.shape, (7, 7), scale, 0)
  fits = (span[:, 0] <= min(window[0], height)) & (span[:, 1] <= min(window[1], width))
  out, grad = _value_and_vjp(feature, boxes, (7, 7), scale, 0, True, window, cotangent)
  np.testing.assert_allclose(np.asarray(out)[fits], want[fits], atol=TOL)
  assert 0 < (~fits).sum() and np.abs(np.asarray(out)[~fits] - want[~fits]).max() > 1e-3  # the count matters
  _, count = jax.jit(ra.roi_align_with_overflow, static_argnums=(2, 3, 4, 5, 6))(
      feature, boxes, (7, 7), scale, 0, True, window)
  assert int(count) == (~fits).sum()
  # The gradient of the fitting RoIs alone is the reference's.
  cotangent = np.where(fits[:, None, None, None], cotangent, 0).astype(np.float32)
  _, grad = _value_and_vjp(feature, boxes, (7, 7), scale, 0, True, window, cotangent)
  np.testing.assert_allclose(grad, _ref_grad(cotangent, boxes, feature.shape, scale), atol=TOL)


def test_jit_vmap_over_a_batch():
  rng = np.random.default_rng(3)
  features = rng.normal(size=(3, 11, 9, 2)).astype(np.float32)
  boxes = np.stack([_boxes(rng, 11, 9, 0.5, n=6) for _ in range(3)])
  single = lambda f, b: (ra.roi_align_with_overflow(f, b, (5, 5), 0.5, window=(6, 6)), ra.roi_align(f, b, (5, 5), 0.5))
  (out, counts), dense = jax.jit(jax.vmap(single))(features, boxes)
  one = jax.jit(single)
  for i in range(3):
    np.testing.assert_allclose(dense[i], _ref(features[i], boxes[i], (5, 5), 0.5), atol=TOL)
    (want, count), _ = one(features[i], boxes[i])
    assert counts[i] == count
    np.testing.assert_allclose(out[i], want, atol=1e-6)


def test_map_roi_levels_equals_mmdet(mmdet):
  del mmdet
  import torch  # pylint: disable=g-import-not-at-top
  from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor  # pylint: disable=g-import-not-at-top
  extractor = object.__new__(SingleRoIExtractor)  # no roi_layers: they would build the compiled op
  extractor.finest_scale = 56
  rng = np.random.default_rng(0)
  sides = [np.float32(s) for s in (112, 224, 448, 896)]
  edge = [np.nextafter(s, np.float32(0)) for s in sides] + [np.nextafter(s, np.float32(1e4)) for s in sides]
  side = np.array(sides + edge + list(rng.uniform(0, 1200, 200)) + [0.0, 1e-3], np.float32)
  aspect = np.concatenate([np.ones(len(sides) + len(edge)), rng.uniform(0.2, 5, 200), [1, 1]]).astype(np.float32)
  x1 = rng.uniform(-50, 500, len(side)).astype(np.float32)
  boxes = np.stack([x1, x1 * 0.5, x1 + side * aspect, x1 * 0.5 + side / aspect], 1).astype(np.float32)
  boxes[:len(sides)] = [[0, 0, s, s] for s in sides]  # exactly on a boundary
  for num_levels in (1, 2, 4, 5):
    want = extractor.map_roi_levels(torch.from_numpy(np.c_[np.zeros(len(boxes)), boxes].astype(np.float32)),
                                    num_levels).numpy()
    got = np.asarray(jax.jit(ra.map_roi_levels, static_argnums=1)(boxes, num_levels))
    np.testing.assert_array_equal(got, want)
  assert np.asarray(ra.map_roi_levels(boxes[:4], 4)).tolist() == [1, 2, 3, 3]


def _multilevel_reference(features, boxes, strides, output_size):
  levels = np.asarray(ra.map_roi_levels(boxes, len(features)))
  out = np.zeros((len(boxes),) + output_size + (features[0].shape[-1],))
  for level, (feature, stride) in enumerate(zip(features, strides)):
    members = levels == level
    if members.any():
      out[members] = _ref(feature, boxes[members], output_size, 1.0 / stride)
  return out, levels


def _multilevel_case():
  rng = np.random.default_rng(11)
  strides = (4, 8, 16, 32)
  canvas = (160, 224)
  features = [rng.normal(size=(-(-canvas[0] // s), -(-canvas[1] // s), 3)).astype(np.float32) for s in strides]
  scales = np.exp(rng.uniform(np.log(4), np.log(900), 48))
  aspect = np.exp(rng.uniform(-0.7, 0.7, 48))  # <= 2.04: DEFAULT_WINDOW's exact range
  centre = rng.uniform(-20, [canvas[1] + 20, canvas[0] + 20], (48, 2))
  half = np.stack([scales * np.sqrt(aspect), scales / np.sqrt(aspect)], 1) / 2
  boxes = np.concatenate([centre - half, centre + half], 1).astype(np.float32)
  want, levels = _multilevel_reference(features, boxes, strides, (7, 7))
  assert set(levels.tolist()) == {0, 1, 2, 3}
  return features, boxes, strides, want, levels


@pytest.mark.parametrize('window', [pytest.param(None, marks=pytest.mark.slow), ra.DEFAULT_WINDOW])
def test_multilevel_equals_per_level_reference(window):
  features, boxes, strides, want, _ = _multilevel_case()
  out, count = jax.jit(ra.multilevel_roi_align, static_argnums=(2, 3, 4, 5))(features, boxes, strides, (7, 7), 0,
                                                                            window)
  np.testing.assert_allclose(out, want, atol=TOL)
  assert int(count) == 0


@pytest.mark.slow
def test_multilevel_small_window_and_gradients():
  """A small window: the fitting RoIs are exact and the count is the per-level functions' counts; the
  features get gradients on each RoI's own level only, as the reference's loop gives."""
  features, boxes, strides, want, levels = _multilevel_case()
  fn = jax.jit(ra.multilevel_roi_align, static_argnums=(2, 3, 4, 5))
  out, count = fn(features, boxes, strides, (7, 7), 0, (9, 9))
  counts = np.zeros(len(boxes), int)
  for l, (feature, stride) in enumerate(zip(features, strides)):  # one RoI at a time on its level
    per_roi = jax.vmap(lambda b, f=feature, s=stride: ra.roi_align_with_overflow(f, b[None], (7, 7), 1 / s,
                                                                                 window=(9, 9))[1])
    counts[levels == l] = np.asarray(jax.jit(per_roi)(boxes))[levels == l]
  assert int(count) == counts.sum() > 0
  np.testing.assert_allclose(np.asarray(out)[counts == 0], want[counts == 0], atol=TOL)
  cotangent = np.random.default_rng(0).normal(size=want.shape).astype(np.float32)
  grads = jax.jit(jax.grad(lambda fs: jnp.vdot(ra.multilevel_roi_align(fs, boxes, strides, (7, 7))[0],
                                               cotangent)))(features)
  for l, (grad, stride) in enumerate(zip(grads, strides)):
    members = levels == l
    want_grad = _ref_grad(cotangent[members], boxes[members], features[l].shape, 1.0 / stride)
    np.testing.assert_allclose(grad, want_grad, atol=TOL, rtol=1e-6)


def test_default_window_fits_mask_rcnn_rois_up_to_aspect_two():
  """The docstring's claim on an 800 x 1344 canvas: every RoI of aspect ratio <= 2.04 fits DEFAULT_WINDOW
  at every level (counted only: zero features); aspect 4 at the top of level 0-2's range does not."""
  strides = (4, 8, 16, 32)
  rng = np.random.default_rng(5)
  for canvas in ((800, 1344), (1344, 800)):
    features = [jnp.zeros((canvas[0] // s, canvas[1] // s, 1)) for s in strides]
    scale = np.exp(rng.uniform(np.log(2), np.log(1500), 400))
    aspect = np.exp(rng.uniform(-np.log(2.04), np.log(2.04), 400))
    centre = rng.uniform(0, [canvas[1], canvas[0]], (400, 2))
    half = np.stack([scale / np.sqrt(aspect), scale * np.sqrt(aspect)], 1) / 2
    boxes = np.concatenate([centre - half, centre + half], 1)  # unclipped: clipping changes the aspect
    fn = jax.jit(lambda f, b: ra.multilevel_roi_align(f, b, strides, (7, 7))[1])
    assert int(fn(features, boxes.astype(np.float32))) == 0
    # sqrt(w*h) 111 (level 0, 55.5 columns of stride 4) and 223 (level 1, 55.75 columns of stride 8).
    flat = np.array([[100, 100, 100 + 222, 100 + 55.5], [300, 200, 300 + 446, 200 + 111.5]], np.float32)
    assert int(fn(features, flat)) == 2


def test_errors():
  feature = np.zeros((4, 4, 1), np.float32)
  box = np.zeros((1, 4), np.float32)
  with pytest.raises(ValueError, match='feature must be'):
    ra.roi_align(feature[0], box, (2, 2), 1.0)
  with pytest.raises(ValueError, match='boxes must'):
    ra.roi_align(feature, box[:, :3], (2, 2), 1.0)
  with pytest.raises(ValueError, match='output_size'):
    ra.roi_align(feature, box, (0, 2), 1.0)
  with pytest.raises(ValueError, match='sampling_ratio'):
    ra.roi_align(feature, box, (2, 2), 1.0, sampling_ratio=-1)
  with pytest.raises(ValueError, match='window'):
    ra.roi_align(feature, box, (2, 2), 1.0, window=(2,))
  with pytest.raises(ValueError, match='one \\[H, W, C\\] map per stride'):
    ra.multilevel_roi_align([feature], box, (4, 8), (2, 2))
  with pytest.raises(ValueError, match='num_levels'):
    ra.map_roi_levels(box, 0)
