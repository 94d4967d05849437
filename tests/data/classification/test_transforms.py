"""Host-side TF transforms: RandomResizedCrop sampling, fused JPEG decode-and-crop, resizes against PIL,
the eval resize + center crop."""

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip('tensorflow')

from configs import default  # pylint: disable=g-import-not-at-top
from hatnet_jax.data import testing
from hatnet_jax.data.classification import transforms


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


def _photo_jpegs():
  """Real photographs (scikit-learn's sample images) re-encoded at several qualities, in RGB (4:2:0 and
  4:4:4 chroma), greyscale and CMYK: (name, bytes)."""
  import io  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_sample_image  # pylint: disable=g-import-not-at-top
  out = []
  for name in ('china.jpg', 'flower.jpg'):
    photo = Image.fromarray(load_sample_image(name))
    for quality in (30, 75, 95):
      for mode, kw in (('RGB', {}), ('RGB', {'subsampling': 0}), ('L', {}), ('CMYK', {})):
        buf = io.BytesIO()
        photo.convert(mode).save(buf, 'JPEG', quality=quality, **kw)
        out.append((f'{name}/q{quality}/{mode}{kw}', buf.getvalue()))
  return out


def _pil_rgb(data):
  import io  # pylint: disable=g-import-not-at-top
  return np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))


def test_jpeg_decoding_equals_pil_on_real_photographs():
  for name, data in _photo_jpegs():
    got = transforms.decode_image(tf.constant(data)).numpy()
    np.testing.assert_array_equal(got, _pil_rgb(data), err_msg=name)


def test_fused_jpeg_crop_equals_pil_decode_then_crop():
  rng = np.random.default_rng(0)
  for name, data in _photo_jpegs()[::3]:
    ref = _pil_rgb(data)
    h, w = ref.shape[:2]
    for i in range(5):
      crop = transforms.decode_and_random_crop(tf.constant(data), _seed(i), (0.08, 1.0), (0.75, 4 / 3))
      top, left, ch, cw = (int(v) for v in transforms.sample_crop_box(_seed(i), h, w))
      np.testing.assert_array_equal(crop.numpy(), ref[top:top + ch, left:left + cw], err_msg=name)
    top, left = int(rng.integers(0, h - 40)), int(rng.integers(0, w - 40))  # odd offsets and sizes
    window = transforms.decode_jpeg_window(tf.constant(data), top, left, 37, 39).numpy()
    np.testing.assert_array_equal(window, ref[top:top + 37, left:left + 39], err_msg=name)
  # Non-JPEG input (here a PNG, whatever a file name would say) takes the decode-then-crop path.
  full = _pil_rgb(_photo_jpegs()[0][1])
  png = testing.encode(full, 'PNG')
  crop = transforms.decode_and_random_crop(tf.constant(png), _seed(1), (0.08, 1.0), (0.75, 4 / 3))
  top, left, ch, cw = (int(v) for v in transforms.sample_crop_box(_seed(1), *full.shape[:2]))
  np.testing.assert_array_equal(crop.numpy(), full[top:top + ch, left:left + cw])
  np.testing.assert_array_equal(transforms.decode_image(tf.constant(png)).numpy(), full)


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
  crop = transforms.TrainCrop(d, canvas=0)
  jpeg = tf.constant(testing.make_jpeg(np.random.default_rng(2), 60, 45))
  (a, extent), (b, _), (c, _) = crop(jpeg, _seed(1)), crop(jpeg, _seed(1)), crop(jpeg, _seed(2))
  assert a.shape == (24, 24, 3) and a.dtype == tf.uint8 and extent.numpy().tolist() == [24, 24]
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_train_crop_leaves_the_resize_to_the_device_when_the_window_fits_the_canvas():
  d = default.get_config().data
  d.image_size = 24
  jpeg = tf.constant(testing.make_jpeg(np.random.default_rng(2), 60, 45))
  host = transforms.TrainCrop(d, canvas=0)
  for i in range(12):
    window = transforms.decode_and_random_crop(jpeg, _seed(i), (0.08, 1.0), (0.75, 4 / 3)).numpy()
    img, extent = transforms.TrainCrop(d, canvas=64)(jpeg, _seed(i))  # every window fits
    np.testing.assert_array_equal(img, window)
    assert extent.numpy().tolist() == list(window.shape[:2])
    # Canvas 30: windows over 30 pixels are resized here, exactly as without a canvas.
    img, extent = transforms.TrainCrop(d, canvas=30)(jpeg, _seed(i))
    if max(window.shape[:2]) > 30:
      np.testing.assert_array_equal(img, host(jpeg, _seed(i))[0])
      assert extent.numpy().tolist() == [24, 24]
    else:
      np.testing.assert_array_equal(img, window)


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
