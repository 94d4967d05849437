"""Host-side TF transforms: RandomResizedCrop sampling, fused JPEG decode-and-crop, resizes against PIL,
the eval resize + center crop."""

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip('tensorflow')

from configs import default  # pylint: disable=g-import-not-at-top
from hatnet_jax.data import testing, transforms


def _seed(i):
  return tf.constant([7, i], tf.int64)


def test_crop_box_sampling_follows_random_resized_crop():
  h, w = 375, 500
  areas, ratios = [], []
  for i in range(200):
    top, left, ch, cw = (int(v) for v in transforms.sample_crop_box(_seed(i), h, w))
    assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w and ch > 0 and cw > 0
    areas.append(ch * cw / (h * w))
    ratios.append(cw / ch)
  areas, ratios = np.array(areas), np.array(ratios)
  assert areas.min() >= 0.08 * 0.9 and areas.max() <= 1.0
  assert ratios.min() >= 0.75 * 0.95 and ratios.max() <= 4 / 3 * 1.05
  assert 0.35 < areas.mean() < 0.65  # uniform(0.08, 1) area, minus rejected tries
  # Same seed, same box; different seeds, different boxes.
  a = [int(v) for v in transforms.sample_crop_box(_seed(3), h, w)]
  assert a == [int(v) for v in transforms.sample_crop_box(_seed(3), h, w)]
  # A very elongated image never fits the ratio range: central crop with the ratio clamped.
  top, left, ch, cw = (int(v) for v in transforms.sample_crop_box(_seed(0), 20, 400))
  assert (ch, cw) == (20, round(20 * 4 / 3)) and left == (400 - cw) // 2 and top == 0


def test_fused_jpeg_crop_matches_decode_then_crop():
  rng = np.random.default_rng(0)
  jpeg = testing.make_jpeg(rng, 120, 90)
  full = tf.io.decode_jpeg(jpeg, channels=3).numpy().astype(int)
  crop = transforms.decode_and_random_crop(tf.constant(jpeg), _seed(1), (0.08, 1.0), (0.75, 4 / 3))
  top, left, ch, cw = (int(v) for v in transforms.sample_crop_box(_seed(1), 90, 120))
  ref = full[top:top + ch, left:left + cw]
  assert crop.shape == ref.shape
  diff = np.abs(crop.numpy().astype(int) - ref)
  assert diff.mean() < 1.0  # libjpeg's cropped decode differs only in chroma upsampling at the edges
  # Non-JPEG input takes the decode-then-crop path and is exact.
  png = testing.encode(full.astype(np.uint8), 'PNG')
  crop = transforms.decode_and_random_crop(tf.constant(png), _seed(1), (0.08, 1.0), (0.75, 4 / 3))
  np.testing.assert_array_equal(crop.numpy(), ref)


def test_resize_matches_pil_bicubic():
  img = testing.make_image(np.random.default_rng(1), 90, 70)
  for size in ((31, 40), (120, 150)):  # shrink (antialiased like PIL) and enlarge
    got = transforms.resize(tf.constant(img), *size).numpy().astype(int)
    want = np.asarray(Image.fromarray(img).resize(size[::-1], Image.BICUBIC)).astype(int)
    diff = np.abs(got - want)
    # PIL rounds and clips to uint8 between its horizontal and vertical passes, TF does not: a few
    # pixels where bicubic overshoots differ by more than 1.
    assert np.percentile(diff, 99) <= 2 and diff.mean() < 0.5, (size, diff.max(), diff.mean())


def test_train_crop_output_and_determinism():
  d = default.get_config().data
  d.image_size = 24
  crop = transforms.TrainCrop(d)
  jpeg = tf.constant(testing.make_jpeg(np.random.default_rng(2), 60, 45))
  a, b, c = crop(jpeg, _seed(1)), crop(jpeg, _seed(1)), crop(jpeg, _seed(2))
  assert a.shape == (24, 24, 3) and a.dtype == tf.uint8
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


@pytest.mark.parametrize('width,height', [(100, 75), (60, 90)])
def test_eval_crop_matches_resize_then_center_crop(width, height):
  d = default.get_config().data
  d.image_size = 32  # resize shorter side to floor(32 / 0.875) = 36, center crop 32
  img = testing.make_image(np.random.default_rng(3), width, height)
  got = transforms.EvalCrop(d)(tf.constant(testing.encode(img, 'PNG'))).numpy().astype(int)
  short, long_ = min(width, height), max(width, height)
  new_long = int(36 * long_ / short)
  new_w, new_h = (36, new_long) if width <= height else (new_long, 36)
  resized = np.asarray(Image.fromarray(img).resize((new_w, new_h), Image.BICUBIC)).astype(int)
  top, left = int(round((new_h - 32) / 2.0)), int(round((new_w - 32) / 2.0))
  want = resized[top:top + 32, left:left + 32]
  assert got.shape == (32, 32, 3)
  diff = np.abs(got - want)
  assert np.percentile(diff, 99) <= 2 and diff.mean() < 0.5


def test_corrupt_image_raises():
  with pytest.raises(tf.errors.InvalidArgumentError):
    transforms.decode_image(tf.constant(testing.corrupt_jpeg(np.random.default_rng(0))))
