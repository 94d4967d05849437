"""Host-side segmentation transforms in TF ops: the mmseg 0.13 ADE20K recipe used by PVT's Semantic FPN.

Train (`TrainTransform`, mmseg pipeline order):
  1. Resize(img_scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True): r ~ U[0.5, 2.0),
     target (int(2048 r), int(512 r)); mmcv `rescale_size`: s = min(max_long / long, max_short / short),
     new size (int(w s + 0.5), int(h s + 0.5)). Image bilinear (cv2 INTER_LINEAR = half-pixel centres,
     no antialiasing, rounded to uint8), label nearest (cv2 INTER_NEAREST: source =
     floor(dst * (1 / (out / in))) in float64, bit-exact).
  2. RandomCrop(512x512, cat_max_ratio=0.75): offsets uniform in [0, max(h - 512, 0)]; up to 10 crops
     are checked, the first whose non-ignored pixels hold more than one class and whose most frequent
     class covers < 75% of them is taken; after 10 rejections an 11th, unchecked, crop is used (mmseg's
     loop exactly).
  3. RandomFlip(p=0.5), horizontal.
  4. PhotoMetricDistortion, mmseg order: brightness (p=.5, delta U(-32, 32)); contrast (p=.5, alpha
     U(0.5, 1.5)) before or after the HSV steps (mode p=.5); saturation (p=.5, alpha U(0.5, 1.5) on S in
     HSV); hue (p=.5, integer delta in [-18, 18) of 180). Every `convert` clips to [0, 255] and
     truncates to uint8 as mmseg. HSV: TF's float HSV with S quantised to 0..255 and H to 0..179 like
     cv2's uint8 HSV, back to RGB rounded to uint8. cv2's fixed-point uint8 HSV differs: measured against
     mmseg up to 5 levels (saturation), 9 (hue), 14 (steps combined) on ~35 % of the values
     (tests/data/segmentation/test_mmseg_parity.py); brightness and contrast are exact.
  5. Normalize(mean, std) and 6. Pad to 512x512 (image 0 after normalisation, label 255): done on the
     device from the uint8 image and its valid size (`seg_pipeline`), the host ships uint8.
Eval (`EvalTransform`): PVT's AlignResize: keep-ratio `rescale_size` to fit (2048, 512), bilinear to
  uint8, then a second bilinear resize to (ceil(h / 32) * 32, ceil(w / 32) * 32). The label stays at its
  original size (mmseg evaluates at the original resolution).

Labels are read with mmseg's reduce_zero_label (`read_label`): 0 -> 255 (ignore), k -> k - 1.
All randomness is stateless from a ``[2]`` int64 seed derived from (run seed, stream position).
"""
import math

from hatnet_jax.data.decode import decode_image  # noqa: F401  (also this module's: the pipeline's decode)
from hatnet_jax.data.tf_host import tf




# ------------------------------------------------------------------------------------------------
# Size rules (pure python, used for eval grouping and by the tests)
# ------------------------------------------------------------------------------------------------


def rescale_size(h, w, scale):
  """mmcv.rescale_size with a (long, short) scale tuple: (new_h, new_w)."""
  max_long, max_short = max(scale), min(scale)
  s = min(max_long / max(h, w), max_short / min(h, w))
  return int(h * float(s) + 0.5), int(w * float(s) + 0.5)


def align_size(h, w, scale, align):
  """PVT AlignResize (keep_ratio): rescale to fit `scale`, then each side up to a multiple of align."""
  nh, nw = rescale_size(h, w, scale)
  return int(math.ceil(nh / align)) * align, int(math.ceil(nw / align)) * align


def ratio_scale(scale, ratio):
  """mmseg Resize.random_sample_ratio: (int(scale[0] * r), int(scale[1] * r))."""
  return int(scale[0] * ratio), int(scale[1] * ratio)


# ------------------------------------------------------------------------------------------------
# TF ops
# ------------------------------------------------------------------------------------------------


def read_label(mask_bytes, reduce_zero_label=True, ignore_index=255):
  """PNG bytes -> int32 [h, w]; reduce_zero_label: 0 -> ignore, k -> k - 1 (255 stays ignore)."""
  lab = tf.cast(tf.io.decode_png(mask_bytes, channels=1)[..., 0], tf.int32)
  if reduce_zero_label:
    lab = tf.where((lab == 0) | (lab == 255), ignore_index, lab - 1)
  return lab


def tf_rescale_size(h, w, max_long, max_short):
  """`rescale_size` in TF float64 (the same IEEE operations as the python version)."""
  h64, w64 = tf.cast(h, tf.float64), tf.cast(w, tf.float64)
  max_long, max_short = tf.cast(max_long, tf.float64), tf.cast(max_short, tf.float64)
  s = tf.minimum(max_long / tf.maximum(h64, w64), max_short / tf.minimum(h64, w64))
  return (tf.cast(tf.floor(h64 * s + 0.5), tf.int32), tf.cast(tf.floor(w64 * s + 0.5), tf.int32))


def resize_bilinear(img, h, w):
  """cv2.resize INTER_LINEAR equivalent on uint8 [H, W, C] -> uint8 [h, w, C]."""
  out = tf.image.resize(tf.cast(img, tf.float32), tf.stack([h, w]), method='bilinear', antialias=False)
  return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)


def _nearest_sources(size_in, size_out):
  """cv2 INTER_NEAREST's source index of each output line: floor(d * (1 / (out / in))) in float64, clipped.
  The reciprocal matters: where d * in / out is a whole number it can round one line lower than
  floor(d * in / out) (15 % of random label resizes differ somewhere otherwise)."""
  inv = 1.0 / (tf.cast(size_out, tf.float64) / tf.cast(size_in, tf.float64))
  src = tf.cast(tf.floor(tf.cast(tf.range(size_out), tf.float64) * inv), tf.int32)
  return tf.minimum(src, size_in - 1)


def resize_nearest(lab, h, w):
  """cv2.resize INTER_NEAREST on an int32 [H, W] label map (mmcv's imresize for labels), bit-exact."""
  shape = tf.shape(lab)
  lab = tf.gather(lab, _nearest_sources(shape[0], h), axis=0)
  return tf.gather(lab, _nearest_sources(shape[1], w), axis=1)


def crop_offsets(seed, h, w, crop_h, crop_w, n):
  """n candidate (top, left) offsets, each uniform in [0, max(h - crop_h, 0)] x [0, max(w - crop_w, 0)]."""
  u = tf.random.stateless_uniform([n, 2], seed, dtype=tf.float64)
  margin = tf.cast(tf.stack([tf.maximum(h - crop_h, 0), tf.maximum(w - crop_w, 0)]), tf.float64)
  return tf.cast(tf.floor(u * (margin + 1.0)), tf.int32)


def cat_crop_ok(lab, top, left, crop_h, crop_w, cat_max_ratio, ignore_index):
  """mmseg's test: more than one non-ignored class and the largest < cat_max_ratio of them."""
  window = tf.slice(lab, tf.stack([top, left]), tf.stack(
      [tf.minimum(crop_h, tf.shape(lab)[0] - top), tf.minimum(crop_w, tf.shape(lab)[1] - left)]))
  cnt = tf.math.bincount(tf.reshape(window, [-1]), minlength=256, maxlength=256, dtype=tf.int64)
  cnt = tf.tensor_scatter_nd_update(cnt, [[ignore_index]], tf.zeros([1], tf.int64))
  total = tf.reduce_sum(cnt)
  frac = tf.cast(tf.reduce_max(cnt), tf.float64) / tf.cast(tf.maximum(total, 1), tf.float64)
  return (tf.math.count_nonzero(cnt) > 1) & (frac < cat_max_ratio)


def random_crop(img, lab, seed, crop_h, crop_w, cat_max_ratio=0.75, ignore_index=255, tries=10):
  """mmseg RandomCrop: (image, label) windows of at most crop_h x crop_w."""
  h, w = tf.shape(lab)[0], tf.shape(lab)[1]
  offsets = crop_offsets(seed, h, w, crop_h, crop_w, tries + 1)
  if cat_max_ratio < 1.0:
    def cond(t):
      return (t < tries) & tf.logical_not(cat_crop_ok(lab, offsets[t, 0], offsets[t, 1], crop_h,
                                                      crop_w, cat_max_ratio, ignore_index))
    t = tf.while_loop(cond, lambda t: (t + 1,), (tf.constant(0),))[0]
  else:
    t = tf.constant(0)
  top, left = offsets[t, 0], offsets[t, 1]
  ch, cw = tf.minimum(crop_h, h - top), tf.minimum(crop_w, w - left)
  return (tf.slice(img, tf.stack([top, left, 0]), tf.stack([ch, cw, 3])),
          tf.slice(lab, tf.stack([top, left]), tf.stack([ch, cw])))


def _convert(x, alpha=1.0, beta=0.0):
  """mmseg PhotoMetricDistortion.convert: x * alpha + beta, clip to [0, 255], astype(uint8)."""
  return tf.cast(tf.clip_by_value(tf.cast(x, tf.float32) * alpha + beta, 0.0, 255.0), tf.uint8)


def _hsv_op(img, fn):
  hsv = tf.image.rgb_to_hsv(tf.cast(img, tf.float32) / 255.0)
  hsv = fn(hsv)
  rgb = tf.image.hsv_to_rgb(hsv) * 255.0
  return tf.cast(tf.clip_by_value(tf.round(rgb), 0.0, 255.0), tf.uint8)


def photometric_distortion(img, seed, brightness_delta=32, contrast_range=(0.5, 1.5),
                           saturation_range=(0.5, 1.5), hue_delta=18):
  """mmseg PhotoMetricDistortion on a uint8 [h, w, 3] RGB image."""
  u = tf.random.stateless_uniform([9], seed, dtype=tf.float32)
  apply = lambda p, fn, x: tf.cond(p < 0.5, lambda: fn(x), lambda: x)

  brightness = lambda x: _convert(x, beta=-brightness_delta + 2.0 * brightness_delta * u[1])
  c_lo, c_hi = contrast_range
  contrast = lambda x: _convert(x, alpha=c_lo + (c_hi - c_lo) * u[4])
  s_lo, s_hi = saturation_range
  def sat(hsv):
    s = tf.round(hsv[..., 1] * 255.0)
    s = tf.cast(_convert(s, alpha=s_lo + (s_hi - s_lo) * u[6]), tf.float32) / 255.0
    return tf.stack([hsv[..., 0], s, hsv[..., 2]], axis=-1)
  delta = tf.floor(u[8] * 2 * hue_delta) - hue_delta  # numpy randint(-d, d): [-d, d - 1]
  def hue(hsv):
    h = tf.math.floormod(tf.round(hsv[..., 0] * 180.0), 180.0)
    h = tf.math.floormod(h + delta, 180.0) / 180.0
    return tf.stack([h, hsv[..., 1], hsv[..., 2]], axis=-1)

  img = apply(u[0], brightness, img)
  contrast_first = u[2] >= 0.5  # mode == 1
  img = tf.cond(contrast_first, lambda: apply(u[3], contrast, img), lambda: img)
  img = apply(u[5], lambda x: _hsv_op(x, sat), img)
  img = apply(u[7], lambda x: _hsv_op(x, hue), img)
  img = tf.cond(contrast_first, lambda: img, lambda: apply(u[3], contrast, img))
  return img


class TrainTransform:
  """(image bytes, mask bytes, seed [2] int64) -> (uint8 [C, C, 3] padded with 0, int32 [C, C]
  label padded with ignore, int32 [2] valid (h, w) of the image before padding)."""

  def __init__(self, d, reduce_zero_label=True):
    self.crop = int(d.crop_size)
    self.scale = tuple(int(x) for x in d.scale)
    self.ratio_range = tuple(float(x) for x in d.ratio_range)
    self.cat_max_ratio = float(d.cat_max_ratio)
    self.hflip_prob = float(d.hflip_prob)
    self.photometric = bool(d.photometric)
    self.ignore = int(d.ignore_index)
    self.reduce_zero_label = reduce_zero_label

  def __call__(self, image_bytes, mask_bytes, seed):
    seeds = tf.random.experimental.stateless_split(seed, 4)
    img = decode_image(image_bytes)
    lab = read_label(mask_bytes, self.reduce_zero_label, self.ignore)
    shape = tf.shape(img)
    h, w = shape[0], shape[1]
    tf.debugging.assert_equal(tf.shape(lab), shape[:2], message='mask size != image size')
    lo, hi = self.ratio_range
    r = lo + (hi - lo) * tf.random.stateless_uniform([], seeds[0], dtype=tf.float64)
    max_long = tf.floor(self.scale[0] * r)  # int(scale * ratio)
    max_short = tf.floor(self.scale[1] * r)
    max_long, max_short = tf.maximum(max_long, max_short), tf.minimum(max_long, max_short)
    nh, nw = tf_rescale_size(h, w, max_long, max_short)
    img = resize_bilinear(img, nh, nw)
    lab = resize_nearest(lab, nh, nw)
    img, lab = random_crop(img, lab, seeds[1], self.crop, self.crop, self.cat_max_ratio, self.ignore)
    flip = tf.random.stateless_uniform([], seeds[2]) < self.hflip_prob
    img = tf.cond(flip, lambda: tf.reverse(img, [1]), lambda: img)
    lab = tf.cond(flip, lambda: tf.reverse(lab, [1]), lambda: lab)
    if self.photometric:
      img = photometric_distortion(img, seeds[3])
    valid = tf.shape(lab)
    pad = [[0, self.crop - valid[0]], [0, self.crop - valid[1]]]
    img = tf.pad(img, pad + [[0, 0]], constant_values=0)
    lab = tf.pad(lab, pad, constant_values=self.ignore)
    img.set_shape([self.crop, self.crop, 3])
    lab.set_shape([self.crop, self.crop])
    return img, lab, tf.cast(valid, tf.int32)


class EvalTransform:
  """(image bytes, mask bytes, aligned (h, w), label pad (h, w)) -> (uint8 [ah, aw, 3],
  int32 [lh, lw] original-size label padded with ignore, int32 [2] original (h, w))."""

  def __init__(self, d, reduce_zero_label=True):
    self.scale = tuple(int(x) for x in d.scale)
    self.align = int(d.align)
    self.ignore = int(d.ignore_index)
    self.reduce_zero_label = reduce_zero_label

  def __call__(self, image_bytes, mask_bytes, aligned_hw, label_hw):
    img = decode_image(image_bytes)
    lab = read_label(mask_bytes, self.reduce_zero_label, self.ignore)
    shape = tf.shape(img)
    h, w = shape[0], shape[1]
    tf.debugging.assert_equal(tf.shape(lab), shape[:2], message='mask size != image size')
    nh, nw = tf_rescale_size(h, w, max(self.scale), min(self.scale))
    img = resize_bilinear(img, nh, nw)
    img = resize_bilinear(img, aligned_hw[0], aligned_hw[1])
    lab = tf.pad(lab, [[0, label_hw[0] - h], [0, label_hw[1] - w]], constant_values=self.ignore)
    return img, lab, tf.stack([h, w])
