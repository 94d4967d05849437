"""Parity with the real mmsegmentation for the pieces that decide the ADE20K number.

Optional: skipped unless mmsegmentation is installed (``pip install --no-deps -r requirements-references.txt``,
see that file; .ci/run does it and runs this file alone). mmseg 1.2.2 runs here on mmcv-lite 2.1.0 and
mmengine 0.10.7 with import stubs for the compiled `mmcv.ops` (tests/references/mmseg_stub.py): the
transforms, Pad/Normalize and `IoUMetric` are pure Python / NumPy / OpenCV.

Same inputs, same random state: our transforms draw from stateless TF seeds; each test derives the draws
exactly as our code does (`_train_draws` mirrors TrainTransform's seed plumbing) and hands the same values
to mmseg by scripting the `numpy.random` functions mmcv/mmseg call (`Script`: each call must match the
expected function and arguments, so the order and ranges of mmseg's draws are checked too).

Exact where the arithmetic can be: scale rule, crop windows (cat_max_ratio 0.75, ignore 255), flip,
brightness/contrast, pad values, label loading, mIoU/mAcc/aAcc. Bounded where the implementations differ
by construction, with the measured figure: bilinear resize (TF float vs OpenCV's 11-bit fixed point: at
most 1 level), HSV steps (TF float HSV vs OpenCV's uint8 HSV), normalisation (float32 rounding). Two
gaps these tests found are closed: JPEG decoding (TF's default fast IDCT -> the accurate one, as OpenCV)
and the label nearest resize (OpenCV's float64 reciprocal scale, `resize_nearest`).

mmseg 1.x vs the 0.13 PVT used (we follow 0.13): the draws and arithmetic of Resize(ratio_range),
RandomCrop, PhotoMetricDistortion, Pad and reduce_zero_label are the same code in both; RandomFlip's
decision is `rand() < prob` in 0.13 and `choice([dir, None], p=[prob, 1 - prob])` in 1.x (the same rule
for one draw, checked here); 1.x has no AlignResize (its test pipeline resizes without the 32-alignment,
so the 0.13/PVT step is built here from the mmcv calls PVT's align_resize.py makes); 1.x normalises and
pads in SegDataPreProcessor (torch) instead of Normalize+Pad (same values, both checked); IoUMetric sums
per-image float32 areas and divides in float32, where 0.13 accumulates float64 totals (exact counts;
`test_iou_metric_*` shows where 1.x rounds).
"""
import functools
import io
import warnings

import numpy as np
import pytest

pytest.importorskip('mmseg')
tf = pytest.importorskip('tensorflow')

from tests.references import mmseg_stub  # pylint: disable=g-import-not-at-top

mmseg_stub.install()  # before mmseg.datasets / mmseg.evaluation import mmcv.ops

import mmcv  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch  # pylint: disable=g-import-not-at-top,wrong-import-position
from mmcv.transforms import LoadImageFromFile, Pad, RandomResize  # pylint: disable=g-import-not-at-top
from mmseg.datasets.transforms import LoadAnnotations, PhotoMetricDistortion, RandomCrop, RandomFlip  # noqa
from mmseg.evaluation import IoUMetric  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import seg_default  # pylint: disable=g-import-not-at-top,wrong-import-position
from hatnet_jax.data import testing  # pylint: disable=g-import-not-at-top,wrong-import-position
from hatnet_jax.data import stream  # pylint: disable=g-import-not-at-top,wrong-import-position
from hatnet_jax.data.segmentation import transforms as seg_transforms  # pylint: disable=g-import-not-at-top
from hatnet_jax.metrics import miou  # pylint: disable=g-import-not-at-top,wrong-import-position

# Slow (~70 s with mmseg's imports): in CI's slow run, after .ci/run installs requirements-references.txt.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings('ignore:`torch.jit:DeprecationWarning')]  # mmseg.models' imports

SCALE, RATIO, CROP, CAT_MAX, IGNORE = (2048, 512), (0.5, 2.0), 512, 0.75, 255  # the ADE20K recipe
MEAN_255 = np.array([123.675, 116.28, 103.53])  # mmseg's img_norm_cfg (RGB)
STD_255 = np.array([58.395, 57.12, 57.375])


# ------------------------------------------------------------------------------------------------
# Shared machinery
# ------------------------------------------------------------------------------------------------


class Script:
  """Stands in for the numpy.random functions mmcv/mmseg transforms call; answers from a script.

  `expect((name, args, value), ...)` loads the calls to come; each call must match name and positional
  args; value may be a callable of (*args, **kwargs). `used` counts the calls answered since `expect`.
  """

  NAMES = ('random_sample', 'rand', 'randint', 'uniform', 'choice')

  def __init__(self, monkeypatch):
    self.calls, self.used = [], 0
    for name in self.NAMES:
      monkeypatch.setattr(np.random, name, functools.partial(self._answer, name))

  def expect(self, *calls):
    self.calls, self.used = list(calls), 0

  def _answer(self, name, *args, **kwargs):
    assert self.calls, f'unscripted call numpy.random.{name}{args}'
    want, want_args, value = self.calls.pop(0)
    assert (name, args) == (want, want_args), (
        f'numpy.random.{name}{args}; the script expected {want}{want_args}')
    self.used += 1
    return value(*args, **kwargs) if callable(value) else value


@pytest.fixture
def script(monkeypatch):
  return Script(monkeypatch)


def _numpy_choice_rule(u):
  """numpy's RandomState.choice(a, p=p) for the uniform draw u: a[searchsorted(cumsum(p) / sum, u, 'right')]."""
  def choice(a, p=None):
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    return a[int(cdf.searchsorted(u, side='right'))]
  return choice


def _train_draws(seed, resized_hw=None, crop=CROP):
  """The draws TrainTransform makes from `seed` (its seed plumbing, mirrored here test-side).

  Returns dict(u_ratio float64, offsets int [11, 2] (when resized_hw is given), u_flip float32,
  u_photo float32 [9]).
  """
  seeds = tf.random.experimental.stateless_split(tf.constant(seed, tf.int64), 4)
  out = dict(u_ratio=float(tf.random.stateless_uniform([], seeds[0], dtype=tf.float64)),
             u_flip=float(tf.random.stateless_uniform([], seeds[2])),
             u_photo=tf.random.stateless_uniform([9], seeds[3], dtype=tf.float32).numpy())
  if resized_hw is not None:
    out['offsets'] = seg_transforms.crop_offsets(seeds[1], resized_hw[0], resized_hw[1], crop, crop, 11).numpy()
  return out


def _photo_script(u, brightness_delta=32, contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue_delta=18):
  """The numpy.random calls mmseg's PhotoMetricDistortion makes when its draws are ours (u float32 [9]).

  Ours: step k applies iff u < 0.5 (mmseg: randint(2) == 1); contrast first iff u[2] >= 0.5 (mode == 1);
  values lo + (hi - lo) * u (mmseg: uniform(lo, hi), exact in float64 and rounded to float32 by both);
  hue delta floor(36 u) - 18 (mmseg: randint(-18, 18)).
  """
  u = np.asarray(u, np.float32)
  f = lambda k: float(u[k])
  calls = [('randint', (2,), int(u[0] < 0.5))]
  if u[0] < 0.5:
    beta = -brightness_delta + 2 * brightness_delta * f(1)
    calls.append(('uniform', (-brightness_delta, brightness_delta), beta))
  mode = int(u[2] >= 0.5)
  calls.append(('randint', (2,), mode))
  contrast_calls = [('randint', (2,), int(u[3] < 0.5))]
  if u[3] < 0.5:
    contrast_calls.append(('uniform', contrast, contrast[0] + (contrast[1] - contrast[0]) * f(4)))
  if mode == 1:
    calls += contrast_calls
  calls.append(('randint', (2,), int(u[5] < 0.5)))
  if u[5] < 0.5:
    calls.append(('uniform', saturation, saturation[0] + (saturation[1] - saturation[0]) * f(6)))
  calls.append(('randint', (2,), int(u[7] < 0.5)))
  if u[7] < 0.5:
    delta = int(np.floor(u[8] * np.float32(2) * np.float32(hue_delta))) - hue_delta
    calls.append(('randint', (-hue_delta, hue_delta), delta))
  if mode == 0:
    calls += contrast_calls
  return calls


def _png(arr):
  return testing.encode(np.ascontiguousarray(arr), 'PNG')


def _ade_label(rng, h, w, dominant=0.8):
  """Raw ADE-like label (uint8 0..150, 0 = 'other' -> ignore): one dominant class and blocks of others."""
  low = np.where(rng.random((8, 8)) < dominant, 1, rng.integers(0, 151, (8, 8))).astype(np.uint8)
  return np.kron(low, np.ones((h // 8 + 1, w // 8 + 1), np.uint8))[:h, :w]


def _data_config(**kw):
  d = seg_default.data_config()
  d.update(kw)
  return d


def _mm_load(tmp_path, img_rgb, raw_label, name='x'):
  """mmseg 1.x loading: LoadImageFromFile (cv2, BGR) and LoadAnnotations(reduce_zero_label=True)."""
  (tmp_path / f'{name}.png').write_bytes(_png(img_rgb))
  (tmp_path / f'{name}_seg.png').write_bytes(_png(raw_label))
  r = dict(img_path=str(tmp_path / f'{name}.png'), seg_map_path=str(tmp_path / f'{name}_seg.png'),
           reduce_zero_label=True, seg_fields=[])
  r = LoadImageFromFile()(r)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # reduce_zero_label's deprecation notice
    return LoadAnnotations(reduce_zero_label=True)(r)


# ------------------------------------------------------------------------------------------------
# Loading (reduce_zero_label) and decoding
# ------------------------------------------------------------------------------------------------


def test_label_reduce_zero_label_and_png_image_match_mmseg_loading(tmp_path):
  """read_label == LoadAnnotations(reduce_zero_label=True) (0 and 255 -> 255, k -> k - 1) and PNG images
  decode to the same pixels as LoadImageFromFile (cv2, BGR): exact. Same in 0.13 and 1.x."""
  rng = np.random.default_rng(0)
  raw = rng.integers(0, 151, (37, 53)).astype(np.uint8)
  raw[0, :4] = [0, 1, 150, 255]
  img = testing.make_image(rng, 53, 37)
  r = _mm_load(tmp_path, img, raw)
  np.testing.assert_array_equal(seg_transforms.read_label(tf.constant(_png(raw))).numpy(), r['gt_seg_map'])
  assert r['gt_seg_map'][0, :4].tolist() == [255, 0, 149, 255]
  np.testing.assert_array_equal(seg_transforms.decode_image(tf.constant(_png(img))).numpy(),
                                r['img'][..., ::-1])


def _jpegs():
  """(data, cv2's decode as RGB) for quality-90 JPEGs with 4:4:4, 4:2:0 and 4:2:2 chroma, 683x512 .. 97x61."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for (w, h), sub in [((683, 512), 0), ((500, 375), 2), ((97, 61), 1)]:
    buf = io.BytesIO()
    Image.fromarray(testing.make_image(rng, w, h)).save(buf, 'JPEG', quality=90, subsampling=sub)
    yield buf.getvalue(), mmcv.imfrombytes(buf.getvalue(), flag='color', backend='cv2')[..., ::-1]


def test_tf_jpeg_decode_with_accurate_idct_is_mmcv_cv2_exact():
  """tf.io.decode_jpeg(dct_method='INTEGER_ACCURATE') (libjpeg's ISLOW IDCT) decodes to exactly what
  mmcv.imfrombytes(backend='cv2') (mmseg's LoadImageFromFile) gives."""
  for data, want in _jpegs():
    got = tf.io.decode_jpeg(data, channels=3, dct_method='INTEGER_ACCURATE').numpy()
    np.testing.assert_array_equal(got, want)


def test_jpeg_decode_bit_exact_with_mmcv_cv2():
  """Our decode_image (the segmentation pipeline's) is OpenCV's exactly. With TF's default fast IDCT it was
  4-5 levels off on 65-66% of the values of these JPEGs (every ADE20K image is a JPEG)."""
  worst = [int(np.abs(seg_transforms.decode_image(tf.constant(data)).numpy().astype(int) - want).max())
           for data, want in _jpegs()]
  assert max(worst) == 0, f'decode_image vs cv2: max |diff| per image {worst}'


# ------------------------------------------------------------------------------------------------
# Resize(img_scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True)
# ------------------------------------------------------------------------------------------------


def test_ratio_range_and_keep_ratio_scale_rule_matches_mmcv(script):
  """mmcv RandomResize._random_sample_ratio (int(scale * (u * 1.5 + 0.5))) then mmcv.rescale_size's keep-
  ratio rule give the sizes ratio_scale/rescale_size/tf_rescale_size give, for 3000 draws (the ends of
  [0, 1) included) and image sizes from 1 px to 4000 px: exact."""
  rng = np.random.default_rng(0)
  us = np.concatenate([[0.0, np.nextafter(1.0, 0.0), 0.5, 1 / 3], rng.random(2996)])
  hs, ws = rng.integers(1, 4000, len(us)), rng.integers(1, 4000, len(us))
  hs[:8], ws[:8] = [375, 512, 683, 1, 2000, 300, 512, 7], [500, 683, 512, 1, 300, 2000, 512, 5]
  for u, h, w in zip(us, hs.tolist(), ws.tolist()):
    script.expect(('random_sample', (), float(u)))
    target = RandomResize._random_sample_ratio(SCALE, RATIO)  # pylint: disable=protected-access
    ratio = RATIO[0] + (RATIO[1] - RATIO[0]) * float(u)
    assert target == seg_transforms.ratio_scale(SCALE, ratio)
    new_w, new_h = mmcv.rescale_size((w, h), target)
    assert seg_transforms.rescale_size(h, w, target) == (new_h, new_w)
    got = seg_transforms.tf_rescale_size(h, w, max(target), min(target))
    assert (int(got[0]), int(got[1])) == (new_h, new_w)


@pytest.mark.parametrize('hw', [(375, 500), (683, 512), (96, 128), (300, 2000)])
def test_train_resize_matches_mmcv_random_resize(tmp_path, script, hw):
  """TrainTransform's Resize step (crop larger than any resized image, no flip, no distortion, so the valid
  region is the resized image) against mmcv RandomResize fed the same ratio draw.
  Size and label (cv2 INTER_NEAREST) exact. Image (cv2
  INTER_LINEAR on uint8 uses 11-bit fixed-point weights, ours float then round): at most 1 level
  (measured: 1, on 11.8-12.8% of the values).
  """
  h, w = hw
  rng = np.random.default_rng(h * 10_000 + w)
  img, raw = testing.make_image(rng, w, h), _ade_label(rng, h, w, 0.4)
  r0 = _mm_load(tmp_path, img, raw)
  t = seg_transforms.TrainTransform(_data_config(crop_size=4096, hflip_prob=0.0, photometric=False))
  for s in range(2):
    seed = [11, 100 * h + s]
    out_img, out_lab, valid = (x.numpy() for x in t(tf.constant(_png(img)), tf.constant(_png(raw)),
                                                      tf.constant(seed, tf.int64)))
    vh, vw = valid
    script.expect(('random_sample', (), _train_draws(seed)['u_ratio']))
    r = RandomResize(scale=SCALE, ratio_range=RATIO, keep_ratio=True)(dict(r0, img=r0['img'].copy(),
                                                                          gt_seg_map=r0['gt_seg_map'].copy()))
    assert script.used == 1
    assert r['img'].shape[:2] == r['gt_seg_map'].shape == (vh, vw)
    assert np.all(out_img[vh:] == 0) and np.all(out_img[:, vw:] == 0) and np.all(out_lab[vh:] == IGNORE)
    diff = np.abs(out_img[:vh, :vw].astype(int) - r['img'][..., ::-1])
    assert diff.max() <= 1, f'bilinear: max |diff| {diff.max()}'
    np.testing.assert_array_equal(out_lab[:vh, :vw], r['gt_seg_map'])


def _source_lines(n_in, n_out, resize):
  """The source line each output line takes under `resize` (on an image whose value is its line index)."""
  idx = np.repeat(np.arange(n_in, dtype=np.int32)[:, None], 2, axis=1)
  return np.asarray(resize(idx, n_out))[:, 0]


@pytest.mark.parametrize('n_in, n_out', [(300, 614), (375, 975), (500, 1300), (512, 1024), (683, 512),
                                         (2000, 4096), (375, 256)])
def test_nearest_resize_takes_cv2s_source_lines(n_in, n_out):
  """Each output line's source line under mmcv.imresize(nearest) (cv2) and under our resize_nearest: the
  same everywhere (floor(d * n_in / n_out) would differ on some lines where d * n_in / n_out is whole)."""
  cv = _source_lines(n_in, n_out,
                    lambda x, n: mmcv.imresize(x.astype(np.uint16), (2, n), interpolation='nearest'))
  ours = _source_lines(n_in, n_out, lambda x, n: seg_transforms.resize_nearest(tf.constant(x), n, 2).numpy())
  np.testing.assert_array_equal(ours, cv)


def test_label_nearest_resize_bit_exact_with_cv2():
  """300x2000 at ratio 2 of (2048, 512) -> 614x4096: cv2 takes source row 149 for output row 307
  (307 * 300 / 614 = 150 exactly, the float64 reciprocal rounds below). floor(d * in / out), TF's nearest
  resize, took 150: over 20000 recipe draws 15% of the resized labels had such a line."""
  lab = np.random.default_rng(0).integers(0, 150, (300, 2000)).astype(np.uint8)
  nh, nw = 614, 4096  # rescale_size(300, 2000, ratio_scale((2048, 512), 2.0))
  want = mmcv.imresize(lab, (nw, nh), interpolation='nearest')
  got = seg_transforms.resize_nearest(tf.constant(lab.astype(np.int32)), nh, nw).numpy()
  np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------------------------------
# RandomCrop(512, cat_max_ratio=0.75, ignore 255), RandomFlip(0.5), Pad
# ------------------------------------------------------------------------------------------------


def _crop_labels(rng):
  """Resized-size labels: mostly one class (crops get rejected), nearly uniform (the 11th, unchecked crop
  is taken), a large ignore area, and ones no larger than the crop (margin 0)."""
  mostly = np.where(rng.random((8, 8)) < 0.85, 3, rng.integers(0, 150, (8, 8)))
  a = np.kron(mostly, np.ones((128, 171), np.int32))[:1024, :1365]
  b = np.full((900, 1200), 7, np.int32)
  b[100:180, 900:1000] = 8
  c = np.kron(rng.integers(0, 5, (6, 4)), np.ones((120, 120), np.int32))[:700, :480]
  c[:, :200] = IGNORE
  d = np.kron(rng.integers(0, 3, (4, 4)), np.ones((100, 128), np.int32))[:400, :512]
  return [a, b, c, d]


def test_random_crop_cat_max_ratio_matches_mmseg(script):
  """random_crop against mmseg RandomCrop(crop_size=(512, 512), cat_max_ratio=0.75, ignore_index=255) fed
  our offsets (mmseg draws randint(0, margin + 1) for top then left, and a new pair after each rejected
  crop): the same window (image and label, exact) and the same number of draws, i.e. the same crop
  index; across the cases the first, a later and the 11th (unchecked) crop are all taken."""
  rng = np.random.default_rng(0)
  taken = []
  for k, lab in enumerate(_crop_labels(rng)):
    h, w = lab.shape
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    for s in range(10):
      seed = tf.constant([k, s], tf.int64)
      got_img, got_lab = (x.numpy() for x in seg_transforms.random_crop(
          tf.constant(img), tf.constant(lab), seed, CROP, CROP, CAT_MAX, IGNORE))
      offsets = seg_transforms.crop_offsets(seed, h, w, CROP, CROP, 11).numpy()
      mh, mw = max(h - CROP, 0), max(w - CROP, 0)
      script.expect(*[('randint', (0, m + 1), int(o)) for t, l in offsets for m, o in ((mh, t), (mw, l))])
      r = RandomCrop(crop_size=(CROP, CROP), cat_max_ratio=CAT_MAX, ignore_index=IGNORE)(
          dict(img=img, gt_seg_map=lab, seg_fields=['gt_seg_map']))
      np.testing.assert_array_equal(got_img, r['img'])
      np.testing.assert_array_equal(got_lab, r['gt_seg_map'])
      assert script.used % 2 == 0
      taken.append(script.used // 2 - 1)
  assert 0 in taken and 10 in taken and any(0 < t < 10 for t in taken), taken


def _identity_transform(h, w, crop, **kw):
  """TrainTransform whose Resize is the identity (ratio 1, scale = the image's own (long, short)) and whose
  crop holds the whole image: only flip (and padding) act."""
  return seg_transforms.TrainTransform(_data_config(scale=(max(h, w), min(h, w)), ratio_range=(1.0, 1.0),
                                                    crop_size=crop, photometric=False, **kw))


def test_random_flip_matches_mmseg(tmp_path, script):
  """TrainTransform's flip (its own draw) against mmseg RandomFlip(prob=0.5) fed the same uniform through
  numpy's choice rule (1.x: choice(['horizontal', None], p=[0.5, 0.5])), and 0.13's rule rand() < prob:
  the same decision, the same image and label (exact); both outcomes occur."""
  h, w = 37, 53
  rng = np.random.default_rng(1)
  img, raw = testing.make_image(rng, w, h), _ade_label(rng, h, w, 0.3)
  r0 = _mm_load(tmp_path, img, raw)
  t = _identity_transform(h, w, 64, hflip_prob=0.5)
  flips = []
  for s in range(12):
    seed = [5, s]
    out_img, out_lab, valid = (x.numpy() for x in t(tf.constant(_png(img)), tf.constant(_png(raw)),
                                                      tf.constant(seed, tf.int64)))
    assert tuple(valid) == (h, w)
    u = _train_draws(seed)['u_flip']
    script.expect(('choice', (['horizontal', None],), _numpy_choice_rule(u)))
    r = RandomFlip(prob=0.5)(dict(r0, img=r0['img'].copy(), gt_seg_map=r0['gt_seg_map'].copy()))
    assert script.used == 1 and r['flip'] == (u < 0.5)  # 1.x == 0.13's rand() < prob
    np.testing.assert_array_equal(out_img[:h, :w], r['img'][..., ::-1])
    np.testing.assert_array_equal(out_lab[:h, :w], r['gt_seg_map'])
    flips.append(r['flip'])
  assert any(flips) and not all(flips)


def test_pad_image_0_label_255_after_normalize_matches_mmseg(tmp_path):
  """TrainTransform's padding (uint8 image 0, label 255) + the device's Normalize/Pad (`stream.normalize_pad`:
  0 outside the valid region after normalisation) against 0.13's Normalize(to_rgb) then
  Pad(size=crop, pad_val=0, seg_pad_val=255) (mmcv.imnormalize, mmcv Pad) and 1.x's
  SegDataPreProcessor(size=crop, pad_val=0, seg_pad_val=255, bgr_to_rgb): label and padded values exact;
  normalised pixels within 1e-6 (float32: ours (x / 255 - m) / s, mmcv (x - 255 m) * (1 / (255 s));
  measured 4.8e-7)."""
  from mmengine.structures import PixelData  # pylint: disable=g-import-not-at-top
  from mmseg.models.data_preprocessor import SegDataPreProcessor  # pylint: disable=g-import-not-at-top
  from mmseg.structures import SegDataSample  # pylint: disable=g-import-not-at-top
  h, w, crop = 37, 50, 64
  rng = np.random.default_rng(2)
  img, raw = testing.make_image(rng, w, h), _ade_label(rng, h, w, 0.3)
  r0 = _mm_load(tmp_path, img, raw)
  out_img, out_lab, valid = _identity_transform(h, w, crop, hflip_prob=0.0)(
      tf.constant(_png(img)), tf.constant(_png(raw)), tf.constant([0, 0], tf.int64))
  d = seg_default.data_config()
  ours = np.asarray(stream.normalize_pad(
      out_img.numpy()[None], valid.numpy()[None], tuple(d.mean), tuple(d.std)))[0]
  out_lab = out_lab.numpy()

  norm = mmcv.imnormalize(r0['img'], MEAN_255, STD_255, to_rgb=True)
  r013 = Pad(size=(crop, crop), pad_val=dict(img=0, seg=IGNORE))(dict(img=norm, gt_seg_map=r0['gt_seg_map']))
  sample = SegDataSample()
  sample.gt_sem_seg = PixelData(data=torch.from_numpy(r0['gt_seg_map'][None].astype(np.int64)))
  pre = SegDataPreProcessor(mean=MEAN_255.tolist(), std=STD_255.tolist(), bgr_to_rgb=True, pad_val=0,
                            seg_pad_val=IGNORE, size=(crop, crop))
  r1x = pre(dict(inputs=[torch.from_numpy(r0['img'].transpose(2, 0, 1).copy())], data_samples=[sample]), True)
  img1x = r1x['inputs'][0].numpy().transpose(1, 2, 0)
  lab1x = r1x['data_samples'][0].gt_sem_seg.data[0].numpy()

  for want_img, want_lab in ((r013['img'], r013['gt_seg_map']), (img1x, lab1x)):
    assert want_img.shape == ours.shape == (crop, crop, 3)
    np.testing.assert_array_equal(out_lab, want_lab)
    assert np.all(want_img[h:] == 0) and np.all(want_img[:, w:] == 0)
    assert np.all(ours[h:] == 0) and np.all(ours[:, w:] == 0) and np.all(out_lab[h:] == IGNORE)
    np.testing.assert_allclose(ours, want_img, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# PhotoMetricDistortion
# ------------------------------------------------------------------------------------------------


def test_photometric_convert_arithmetic_is_mmseg_exact():
  """convert(x, alpha, beta) = clip(float32(x) * alpha + beta, 0, 255) truncated to uint8: every uint8 value
  for brightness betas and contrast/saturation alphas, ends of the ranges included: exact."""
  x = np.arange(256, dtype=np.uint8).reshape(16, 16)
  pmd = PhotoMetricDistortion()
  for alpha, beta in [(1, -32.0), (1, 31.999998), (1, -0.5), (1, 7.25), (0.5, 0), (1.4999999, 0), (1.0, 0),
                      (0.73, 0), (1.2345678, 0)]:
    got = seg_transforms._convert(tf.constant(x), alpha, beta).numpy()  # pylint: disable=protected-access
    np.testing.assert_array_equal(got, pmd.convert(x, alpha, beta))


# Measured max |diff| (uint8 levels) on _photo_image() over the 128 seeds below, by the steps applied (32 seeds
# brightness/contrast only, 11 saturation only, 12 hue only, 73 other HSV combinations). The HSV steps differ
# by construction: ours is TF's float HSV with only the adjusted channel quantised (S to 0..255, H to 0..179);
# cv2's uint8 round trip quantises H (2-degree steps), S and V, which alone moves values by up to 5 levels.
PHOTO_BOUNDS = {'exact': 0, 'saturation': 5, 'hue': 9, 'hsv+': 14}


def _photo_image():
  rng = np.random.default_rng(3)
  return np.concatenate([testing.make_image(rng, 64, 48), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)])


def test_photometric_distortion_matches_mmseg_given_its_draws(script):
  """photometric_distortion(img, seed) against mmseg PhotoMetricDistortion fed the same draws (the script
  also checks mmseg's draw order: brightness, mode, contrast if mode 1, saturation, hue, contrast if
  mode 0). Grouped by the steps the draws apply: brightness/contrast only -> exact; saturation only,
  hue only, and any other HSV combination -> within PHOTO_BOUNDS (measured maxima; ~35-40% of the values
  move by the HSV round trip). Every single-step pattern occurs among the 128 seeds."""
  img = _photo_image()
  worst = {k: 0 for k in PHOTO_BOUNDS}
  seen = set()
  for s in range(128):
    seed = tf.constant([9, s], tf.int64)
    u = tf.random.stateless_uniform([9], seed, dtype=tf.float32).numpy()
    got = seg_transforms.photometric_distortion(tf.constant(img), seed).numpy()
    calls = _photo_script(u)
    script.expect(*calls)
    want = PhotoMetricDistortion().transform(dict(img=img[..., ::-1].copy()))['img'][..., ::-1]
    assert script.used == len(calls)
    steps = frozenset(k for k, i in (('b', 0), ('c', 3), ('s', 5), ('h', 7)) if u[i] < 0.5)
    seen.add(steps)
    group = ('exact' if not steps & {'s', 'h'} else 'saturation' if steps == {'s'} else
             'hue' if steps == {'h'} else 'hsv+')
    worst[group] = max(worst[group], int(np.abs(got.astype(int) - want).max()))
  assert {frozenset(), frozenset('b'), frozenset('c'), frozenset('s'), frozenset('h')} <= seen
  assert all(worst[k] <= PHOTO_BOUNDS[k] for k in worst), f'max |diff| by group {worst}'


# ------------------------------------------------------------------------------------------------
# Whole-image evaluation input: PVT's AlignResize(keep_ratio=True, size_divisor=32)
# ------------------------------------------------------------------------------------------------


def _pvt_align_resize(img, scale=SCALE, divisor=32):
  """PVT segmentation/align_resize.py AlignResize._resize_img (keep_ratio): mmcv.imrescale to fit `scale`,
  then mmcv.imresize (bilinear) to each side rounded up to a multiple of `divisor`."""
  img = mmcv.imrescale(img, scale)
  ah, aw = (int(np.ceil(n / divisor)) * divisor for n in img.shape[:2])
  return mmcv.imresize(img, (aw, ah))


ALIGN_BOUND = 2  # measured below: max |diff| 1-2 on 0.1-12.8% of the values (two bilinear resizes)


@pytest.mark.parametrize('hw', [(512, 683), (375, 500), (683, 512), (256, 256), (1000, 200), (61, 97)])
def test_eval_align_resize_matches_pvt_whole_image_path(tmp_path, hw):
  """EvalTransform against the 0.13/PVT test pipeline (AlignResize, built from the mmcv calls PVT makes):
  aligned size exact (= align_size, what eval_plan groups by); image within ALIGN_BOUND levels (two cv2
  fixed-point bilinear resizes vs ours); the label is the original-size reduce_zero_label map mmseg
  evaluates against (0.13 compares at the original resolution): exact. mmseg 1.x's test pipeline,
  Resize(scale=(2048, 512), keep_ratio=True), is PVT's first step without the 32-alignment (checked: it
  equals mmcv.imrescale), so 1.x feeds the model a different (unaligned) size; we follow 0.13/PVT."""
  from mmseg.datasets.transforms import Resize  # pylint: disable=g-import-not-at-top
  h, w = hw
  rng = np.random.default_rng(h + w)
  img, raw = testing.make_image(rng, w, h), _ade_label(rng, h, w, 0.4)
  r = _mm_load(tmp_path, img, raw)
  aligned = seg_transforms.align_size(h, w, SCALE, 32)
  got_img, got_lab, orig = (x.numpy() for x in seg_transforms.EvalTransform(_data_config())(
      tf.constant(_png(img)), tf.constant(_png(raw)), tf.constant(aligned), tf.constant([h, w])))
  want = _pvt_align_resize(r['img'])[..., ::-1]
  assert got_img.shape[:2] == want.shape[:2] == aligned and tuple(orig) == (h, w)
  diff = np.abs(got_img.astype(int) - want)
  assert diff.max() <= ALIGN_BOUND, f'max |diff| {diff.max()}, {np.mean(diff > 0):.3f} of values differ'
  np.testing.assert_array_equal(got_lab, r['gt_seg_map'])
  r1x = Resize(scale=SCALE, keep_ratio=True)(dict(img=r['img'].copy()))
  np.testing.assert_array_equal(r1x['img'], mmcv.imrescale(r['img'], SCALE))
  assert r1x['img'].shape[:2] == seg_transforms.rescale_size(h, w, SCALE)


# ------------------------------------------------------------------------------------------------
# IoUMetric: mIoU, mAcc, aAcc
# ------------------------------------------------------------------------------------------------

C = 6


def _eval_split(seed=0, n=9):
  """Labels 0..3 with ignore patches, predictions 0..4 (and anything at ignored pixels): class 4 is predicted
  but never labelled (IoU 0, Acc nan), class 5 is absent from both (IoU and Acc nan)."""
  rng = np.random.RandomState(seed)
  images = []
  for _ in range(n):
    h, w = rng.randint(12, 31), rng.randint(10, 27)
    label = rng.randint(0, 4, (h, w))
    label[rng.rand(h, w) < 0.15] = IGNORE
    pred = np.where(rng.rand(h, w) < 0.6, np.where(label == IGNORE, 1, label), rng.randint(0, 5, (h, w)))
    images.append((pred.astype(np.int64), label.astype(np.int64)))
  return images


def _compute_metrics(monkeypatch, results, num_classes):
  """IoUMetric.compute_metrics on per-image area tuples (as `process` appends them); returns (its summary,
  the totals it summed, its unrounded total_area_to_metrics output)."""
  metric = IoUMetric(ignore_index=IGNORE)
  metric.dataset_meta = dict(classes=tuple(f'c{i}' for i in range(num_classes)))
  seen = {}
  original = IoUMetric.total_area_to_metrics

  def capture(*args, **kwargs):
    out = original(*args, **kwargs)
    seen.update(totals=[np.asarray(a, np.float64) for a in args[:4]], metrics=dict(out))
    return out
  monkeypatch.setattr(IoUMetric, 'total_area_to_metrics', staticmethod(capture))
  summary = metric.compute_metrics(list(results))
  return summary, seen['totals'], seen['metrics']


def test_iou_metric_matches_mmseg(monkeypatch):
  """Same predictions and labels through IoUMetric and through ours (per-image intersect_and_union, and the
  eval loop's batched confusion_matrix -> areas_from_confusion -> metrics_from_totals): per-image and total
  areas exact; per-class IoU/Acc with the same nans (class absent from both: IoU and Acc nan; predicted
  but never labelled: IoU 0, Acc nan) and values within 1e-6 (1.x divides in float32); mIoU/mAcc
  (np.nanmean, 0.13 and 1.x alike) and aAcc within 1e-6; the printed summary (percent, 2 decimals) equal."""
  images = _eval_split()
  metric = IoUMetric(ignore_index=IGNORE)
  metric.dataset_meta = dict(classes=tuple(f'c{i}' for i in range(C)))
  metric.process({}, [dict(pred_sem_seg=dict(data=torch.from_numpy(p[None])),
                           gt_sem_seg=dict(data=torch.from_numpy(l[None]))) for p, l in images])
  per_image = metric.results
  summary, totals, theirs = _compute_metrics(monkeypatch, per_image, C)
  for (p, l), areas in zip(images, per_image):
    np.testing.assert_array_equal(np.stack(miou.intersect_and_union(p, l, C, IGNORE)),
                                  np.stack([a.numpy() for a in areas]))
  total = np.zeros((C, C), np.int64)
  for p, l in images:
    total += np.asarray(miou.confusion_matrix(p, l, C, IGNORE))
  areas = miou.areas_from_confusion(total)
  np.testing.assert_array_equal(np.stack(areas), np.stack(totals))
  ours = miou.metrics_from_totals(*areas)
  for key in ('IoU', 'Acc'):
    np.testing.assert_array_equal(np.isnan(ours[key]), np.isnan(theirs[key]))
    np.testing.assert_allclose(ours[key], theirs[key], rtol=0, atol=1e-6)
  assert np.isnan(ours['IoU'][5]) and np.isnan(ours['Acc'][5])  # absent from both
  assert ours['IoU'][4] == 0 and np.isnan(ours['Acc'][4])  # predicted, never labelled
  assert abs(ours['aAcc'] - float(theirs['aAcc'])) < 1e-6
  assert abs(ours['mIoU'] - float(np.nanmean(theirs['IoU']))) < 1e-6
  assert abs(ours['mAcc'] - float(np.nanmean(theirs['Acc']))) < 1e-6
  # 1.x rounds float32 values (43.82 -> 43.81999969); 0.13 the float64 ones: equal as float32.
  assert {k: np.float32(v) for k, v in summary.items()} == {k: np.float32(np.round(ours[k] * 100, 2))
                                                           for k in ('aAcc', 'mIoU', 'mAcc')}


def test_iou_metric_out_of_range_label_semantics():
  """A label outside [0, C) that is not ignore_index (impossible for ADE20K: reduce_zero_label leaves 0..149
  and 255): intersect_and_union follows mmseg's torch.histc exactly (the pixel's prediction still counts in
  area_pred); the eval loop's confusion_matrix drops the pixel altogether, so its area_pred (and union) is
  lower by exactly those pixels."""
  pred, label = np.array([[0, 1, 2, 1]]), np.array([[0, 9, IGNORE, 1]])
  want = np.stack([a.numpy() for a in IoUMetric.intersect_and_union(torch.from_numpy(pred),
                                                                    torch.from_numpy(label), 3, IGNORE)])
  np.testing.assert_array_equal(np.stack(miou.intersect_and_union(pred, label, 3, IGNORE)), want)
  cm_areas = np.stack(miou.areas_from_confusion(miou.confusion_matrix(pred, label, 3, IGNORE)))
  np.testing.assert_array_equal(want - cm_areas, [[0, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 0]])


def test_iou_metric_totals_follow_0_13_float64_not_1x_float32(monkeypatch):
  """0.13 accumulates the per-image areas into float64 totals (exact counts); 1.x sums the float32 histc
  tensors, which rounds once a class total passes 2^24 pixels (ADE20K val: ~2000 images of ~200k labelled
  pixels). Ours (int64 counts, float64 division) equals the 0.13 computation exactly; 1.x's totals differ
  (here, 2000 images with areas up to 2^18 per class: by up to 224 pixels, relative 8.9e-7; mIoU by
  9e-8, aAcc by 2.5e-7: below the 2-decimal percent it reports, but not exact)."""
  rng = np.random.default_rng(0)
  n, c = 2000, 4
  label = rng.integers(0, 2 ** 18, (n, c))
  inter = (label * rng.uniform(0.3, 1.0, (n, c))).astype(np.int64)
  pred = inter + rng.integers(0, 2 ** 16, (n, c))
  areas = (inter, pred + label - inter, pred, label)
  per_image = [tuple(torch.tensor(a[i], dtype=torch.float32) for a in areas) for i in range(n)]
  _, totals_1x, metrics_1x = _compute_metrics(monkeypatch, per_image, c)
  exact = [a.sum(0) for a in areas]
  # 0.13: torch.zeros(float64) += each image's float32 areas, then total_area_to_metrics in float64.
  t013 = [torch.zeros(c, dtype=torch.float64) for _ in range(4)]
  for areas in per_image:
    for t, a in zip(t013, areas):
      t += a
  np.testing.assert_array_equal(np.stack([t.numpy() for t in t013]), np.stack(exact))
  ours = miou.metrics_from_totals(*exact)
  iou013 = (t013[0] / t013[1]).numpy()
  np.testing.assert_array_equal(ours['IoU'], iou013)
  assert ours['mIoU'] == float(np.nanmean(iou013))
  assert ours['aAcc'] == float(t013[0].sum() / t013[3].sum())
  assert not np.array_equal(np.stack(totals_1x), np.stack(exact))  # 1.x rounds its totals
  assert abs(float(np.nanmean(metrics_1x['IoU'])) - ours['mIoU']) < 1e-6


# ------------------------------------------------------------------------------------------------
# The whole training transform
# ------------------------------------------------------------------------------------------------

E2E_BOUND = 11  # uint8 levels, the measured max over the 12 cases below: resize (<= 1) through the HSV steps


@pytest.mark.parametrize('hw', [(375, 500), (683, 512)])
def test_train_transform_matches_mmseg_pipeline(tmp_path, script, hw):
  """TrainTransform (the recipe: seg_default) + the device's Normalize/Pad against the mmseg pipeline
  LoadImageFromFile, LoadAnnotations(reduce_zero_label), RandomResize((2048, 512), (0.5, 2.0)),
  RandomCrop(512, 0.75), RandomFlip(0.5), PhotoMetricDistortion, then 0.13's Normalize + Pad(512, 0, 255),
  each fed the draws TrainTransform made from the same seed. The crop (window and index) and flip are
  the same; label exact; image within E2E_BOUND levels before normalisation
  and padded values exact (image 0, label 255)."""
  h, w = hw
  rng = np.random.default_rng(h * w)
  img, raw = testing.make_image(rng, w, h), _ade_label(rng, h, w, 0.7)
  r0 = _mm_load(tmp_path, img, raw)
  d = seg_default.data_config()
  transform = seg_transforms.TrainTransform(d)
  for s in range(6):
    seed = [2024, 10 * h + s]
    out_img, out_lab, valid = (x.numpy() for x in transform(tf.constant(_png(img)), tf.constant(_png(raw)),
                                                              tf.constant(seed, tf.int64)))
    draws = _train_draws(seed)
    script.expect(('random_sample', (), draws['u_ratio']))
    r = RandomResize(scale=SCALE, ratio_range=RATIO, keep_ratio=True)(
        dict(r0, img=r0['img'].copy(), gt_seg_map=r0['gt_seg_map'].copy()))
    nh, nw = r['gt_seg_map'].shape
    offsets = _train_draws(seed, (nh, nw))['offsets']
    mh, mw = max(nh - CROP, 0), max(nw - CROP, 0)
    script.expect(*[('randint', (0, m + 1), int(o)) for t, l in offsets for m, o in ((mh, t), (mw, l))])
    r = RandomCrop(crop_size=(CROP, CROP), cat_max_ratio=CAT_MAX, ignore_index=IGNORE)(r)
    top, left = offsets[script.used // 2 - 1]
    script.expect(('choice', (['horizontal', None],), _numpy_choice_rule(draws['u_flip'])))
    r = RandomFlip(prob=0.5)(r)
    script.expect(*_photo_script(draws['u_photo']))
    r = PhotoMetricDistortion()(r)
    assert not script.calls
    ch, cw = r['gt_seg_map'].shape
    assert tuple(valid) == (ch, cw)

    np.testing.assert_array_equal(out_lab[:ch, :cw], r['gt_seg_map'])
    diff = np.abs(out_img[:ch, :cw].astype(int) - r['img'][..., ::-1])
    assert diff.max() <= E2E_BOUND, f'seed {seed}: max |diff| {diff.max()}'

    padded = Pad(size=(CROP, CROP), pad_val=dict(img=0, seg=IGNORE))(dict(
        img=mmcv.imnormalize(r['img'], MEAN_255, STD_255, to_rgb=True), gt_seg_map=r['gt_seg_map']))
    ours = np.asarray(stream.normalize_pad(
        out_img[None], valid[None], tuple(d.mean), tuple(d.std)))[0]
    inside = np.zeros((CROP, CROP), bool)
    inside[:ch, :cw] = True
    np.testing.assert_array_equal(ours[~inside], padded['img'][~inside])
    assert np.all(ours[~inside] == 0) and np.all(out_lab[~inside] == IGNORE)
    np.testing.assert_array_equal(out_lab[~inside], padded['gt_seg_map'][~inside])
