"""The crop's resize on the device (`hatnet_jax.data.classification.crop_resize`) against the host path's TF resize."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')

from hatnet_jax.data import testing  # pylint: disable=g-import-not-at-top
from hatnet_jax.data.classification import crop_resize, transforms  # pylint: disable=g-import-not-at-top

CANVAS = 160
SIZE = 72  # three blocks of outputs, each reading a slab of 88 inputs (crop_resize._slab)


@pytest.mark.parametrize('interpolation', crop_resize.INTERPOLATIONS)
@pytest.mark.parametrize('antialias', [True, False])
def test_window_resize_matches_the_host_resize(interpolation, antialias):
  rng = np.random.default_rng(0)
  assert crop_resize._slab(CANVAS, SIZE, 2.0) == 88
  f = jax.jit(lambda c, h, w: crop_resize.resize_window(c, h, w, SIZE, interpolation, antialias))
  for h, w in ((150, 120), (160, 160), (72, 72), (31, 47), (90, 71)):  # shrink, the identity, enlarge
    img = testing.make_image(rng, w, h)
    want = transforms.resize_window(tf.constant(img), SIZE, SIZE, SIZE / h, SIZE / w,
                                    interpolation=interpolation, antialias=antialias).numpy()
    canvas = np.zeros((CANVAS, CANVAS, 3), np.uint8)
    canvas[:h, :w] = img
    canvas[h:, :] = 255  # whatever lies outside the window must not count
    canvas[:, w:] = 255
    got = np.asarray(f(jnp.asarray(canvas), h, w))
    diff = np.abs(got - want.astype(np.float32))
    # float32 sums in another order: a value at x.5 may round the other way (1 level). Exact ties are
    # common at rational scales (bilinear without antialiasing at 150 -> 72: 4 % of the values).
    assert diff.max() <= 1 and np.mean(diff > 0) < 0.04, ((h, w), diff.max(), np.mean(diff > 0))
    assert np.all(got == np.round(got)) and got.min() >= 0 and got.max() <= 255
    if (h, w) == (SIZE, SIZE):
      np.testing.assert_array_equal(got, img)


def test_weights_ignore_the_padding_and_sum_to_one():
  w = np.asarray(crop_resize.weights(jnp.int32(37), 16, 64))
  assert w.shape == (16, 64) and np.all(w[:, 37:] == 0)
  np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-6)
