"""Host-side image transforms in TensorFlow ops (run by tf.data; tensorflow imported lazily).

JPEGs decode with libjpeg's accurate IDCT, so pixels equal PIL's (tested on real photographs, greyscale and
CMYK files included); a PNG/GIF/BMP named .jpg decodes by its content.

Train: RandomResizedCrop with timm/torchvision's sampling (scale 0.08-1, log-uniform ratio 3/4-4/3,
  10 tries, then the central fallback), fused with JPEG decoding (`decode_and_crop_jpeg`: the window is
  chosen from the JPEG header and only it, plus a 16-pixel margin, is decoded); other formats are
  decoded, then cropped. The crop is resized to ``size x size`` (bicubic, antialiased like PIL when
  shrinking) and rounded to uint8, here or, with ``data.device_resize``, on the device (`TrainCrop`).
  Flip, RandAugment, normalisation and erasing follow on the device (`hatnet_jax.data.classification.augment`).
Eval: resize the shorter side to floor(size / crop_ratio) (the longer side to int(new_short * long /
  short), as torchvision), center crop ``size`` (torchvision's rounding) -> uint8; normalised on device.
  The resize and the crop are one `ScaleAndTranslate` that computes only the kept window (the same
  numbers as resizing the whole image and cropping it).

All randomness is stateless: `seed` is a ``[2]`` int64 tensor derived from (run seed, stream position).
"""
import math

from hatnet_jax.data.decode import DCT_METHOD, decode_image  # noqa: F401  (also this module's names)
from hatnet_jax.data.tf_host import tf

_KERNELS = {'bicubic': 'keyscubic', 'bilinear': 'triangle', 'lanczos3': 'lanczos3', 'area': 'box'}


def _to_uint8(img):
  return tf.cast(tf.clip_by_value(tf.round(img), 0.0, 255.0), tf.uint8)


def resize_window(img, out_h, out_w, scale_y, scale_x, top=0, left=0, interpolation='bicubic',
                  antialias=True):
  """Window [top:top+out_h, left:left+out_w] of `img` resized by (scale_y, scale_x) -> uint8."""
  img = tf.cast(img, tf.float32)[None]
  out = tf.raw_ops.ScaleAndTranslate(
      images=img, size=tf.stack([out_h, out_w]),
      scale=tf.cast(tf.stack([scale_y, scale_x]), tf.float32),
      translation=-tf.cast(tf.stack([top, left]), tf.float32),
      kernel_type=_KERNELS[interpolation], antialias=antialias)
  return _to_uint8(out[0])


def resize(img, height, width, interpolation='bicubic', antialias=True):
  """Whole-image resize of [h, w, 3] to [height, width, 3] uint8 (PIL-like antialiased kernels)."""
  shape = tf.shape(img)
  sy = tf.cast(height, tf.float32) / tf.cast(shape[0], tf.float32)
  sx = tf.cast(width, tf.float32) / tf.cast(shape[1], tf.float32)
  if interpolation != 'nearest' and antialias:
    return resize_window(img, height, width, sy, sx, interpolation=interpolation)
  method = {'bicubic': 'bicubic', 'bilinear': 'bilinear', 'nearest': 'nearest',
            'lanczos3': 'lanczos3', 'area': 'area'}[interpolation]
  out = tf.image.resize(tf.cast(img, tf.float32), tf.stack([height, width]), method=method)
  return _to_uint8(out)


def sample_crop_box(seed, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts=10):
  """RandomResizedCrop.get_params (timm/torchvision), vectorised over the tries.

  Returns int32 (top, left, crop_height, crop_width).
  """
  seeds = tf.random.experimental.stateless_split(seed, 3)
  h = tf.cast(height, tf.float32)
  w = tf.cast(width, tf.float32)
  target = h * w * tf.random.stateless_uniform([attempts], seeds[0], scale[0], scale[1])
  aspect = tf.exp(tf.random.stateless_uniform(
      [attempts], seeds[1], math.log(ratio[0]), math.log(ratio[1])))
  cw = tf.round(tf.sqrt(target * aspect))  # tf.round: half to even, like Python's round
  ch = tf.round(tf.sqrt(target / aspect))
  ok = (cw <= w) & (ch <= h)
  first = tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32)
  any_ok = tf.reduce_any(ok)
  in_ratio = w / h
  fb_w = tf.where(in_ratio > max(ratio), tf.round(h * max(ratio)), w)
  fb_h = tf.where(in_ratio < min(ratio), tf.round(w / min(ratio)), h)
  crop_w = tf.maximum(tf.where(any_ok, cw[first], fb_w), 1.0)
  crop_h = tf.maximum(tf.where(any_ok, ch[first], fb_h), 1.0)
  u = tf.random.stateless_uniform([2], seeds[2])
  top = tf.where(any_ok, tf.floor(u[0] * (h - crop_h + 1)), tf.floor((h - crop_h) / 2))
  left = tf.where(any_ok, tf.floor(u[1] * (w - crop_w + 1)), tf.floor((w - crop_w) / 2))
  return (tf.cast(top, tf.int32), tf.cast(left, tf.int32), tf.cast(crop_h, tf.int32),
          tf.cast(crop_w, tf.int32))


# The fused crop decodes a window plus this margin and slices it: libjpeg's chroma upsampling at a window
# edge lacks its neighbours, so an unpadded window differs from the full decode by up to ~13 levels
# there (measured on scikit-learn's sample photographs); one 16-pixel MCU of margin makes it exact.
_CROP_MARGIN = 16


def decode_jpeg_window(data, top, left, height, width):
  """The window [top:top+height, left:left+width] of a JPEG, pixel for pixel as the full decode."""
  shape = tf.image.extract_jpeg_shape(data)
  t0, l0 = tf.maximum(top - _CROP_MARGIN, 0), tf.maximum(left - _CROP_MARGIN, 0)
  b0 = tf.minimum(top + height + _CROP_MARGIN, shape[0])
  r0 = tf.minimum(left + width + _CROP_MARGIN, shape[1])
  img = tf.image.decode_and_crop_jpeg(data, tf.stack([t0, l0, b0 - t0, r0 - l0]), channels=3,
                                      dct_method=DCT_METHOD)
  return img[top - t0:top - t0 + height, left - l0:left - l0 + width]


def decode_and_random_crop(data, seed, scale, ratio):
  """Decodes encoded image bytes and returns the RandomResizedCrop window (fused for JPEG)."""

  def jpeg():
    shape = tf.image.extract_jpeg_shape(data)
    top, left, ch, cw = sample_crop_box(seed, shape[0], shape[1], scale, ratio)
    return decode_jpeg_window(data, top, left, ch, cw)

  def other():
    img = decode_image(data)
    shape = tf.shape(img)
    top, left, ch, cw = sample_crop_box(seed, shape[0], shape[1], scale, ratio)
    return tf.slice(img, tf.stack([top, left, 0]), tf.stack([ch, cw, 3]))

  img = tf.cond(tf.io.is_jpeg(data), jpeg, other)
  img.set_shape([None, None, 3])
  return img


class TrainCrop:
  """Host part of the training transform: encoded bytes + seed -> (uint8 image, int32 [2] extent).

  With ``canvas = 0`` the image is the crop resized to ``[size, size, 3]`` (extent = size). With
  ``canvas = C`` (`pipeline.train_canvas`: ``data.device_resize``, or the dataset's fixed image size) it
  is the crop window unresized, ``[h, w, 3]`` with h, w <= C, and the extent is (h, w); batching pads it
  into the top-left corner of a C x C canvas (`padded_batch`: ~0.15 ms per 512 x 512 image here, where a
  `tf.pad` per image cost 1.3 ms) and the device resizes it (`hatnet_jax.data.classification.crop_resize`). A window
  taller or wider than C is resized here (resizing it again on the device is the identity), so every
  crop gets one resize.
  """

  def __init__(self, data_config, canvas=0):
    d = data_config
    self.size = int(d.image_size)
    self.scale = tuple(float(x) for x in d.crop_scale)
    self.ratio = tuple(float(x) for x in d.crop_ratio)
    self.interpolation = d.interpolation
    self.antialias = bool(d.get('antialias', True))
    self.canvas = int(canvas)
    self.shape = [self.canvas or self.size] * 2 + [3]  # of a batch's images

  def _resize(self, img):
    img = resize(img, self.size, self.size, self.interpolation, self.antialias)
    img.set_shape([self.size, self.size, 3])
    return img

  def __call__(self, data, seed):
    img = decode_and_random_crop(data, seed, self.scale, self.ratio)
    if not self.canvas:
      return self._resize(img), tf.constant([self.size, self.size], tf.int32)
    img = tf.cond(tf.reduce_all(tf.shape(img)[:2] <= self.canvas), lambda: img, lambda: self._resize(img))
    img.set_shape([None, None, 3])
    return img, tf.shape(img)[:2]


class EvalCrop:
  """Host part of the eval transform: encoded bytes -> uint8 [size, size, 3] (resize, center crop)."""

  def __init__(self, data_config):
    d = data_config
    self.size = int(d.image_size)
    self.resize_to = int(math.floor(self.size / float(d.eval_crop_ratio) + 1e-6))
    if self.resize_to < self.size:
      raise ValueError(f'eval_crop_ratio must be <= 1, got {d.eval_crop_ratio}')
    self.interpolation = d.interpolation
    self.antialias = bool(d.get('antialias', True))

  def __call__(self, data):
    img = decode_image(data)
    shape = tf.shape(img)
    h, w = shape[0], shape[1]
    short, long_ = tf.minimum(h, w), tf.maximum(h, w)
    new_long = tf.cast(tf.floor(self.resize_to * tf.cast(long_, tf.float64)
                                / tf.cast(short, tf.float64)), tf.int32)
    new_h = tf.where(h <= w, self.resize_to, new_long)
    new_w = tf.where(h <= w, new_long, self.resize_to)
    top = tf.cast(tf.round(tf.cast(new_h - self.size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - self.size, tf.float32) / 2.0), tf.int32)
    if self.interpolation != 'nearest' and self.antialias:
      sy = tf.cast(new_h, tf.float32) / tf.cast(h, tf.float32)
      sx = tf.cast(new_w, tf.float32) / tf.cast(w, tf.float32)
      out = resize_window(img, self.size, self.size, sy, sx, top, left, self.interpolation)
    else:
      out = resize(img, new_h, new_w, self.interpolation, self.antialias)
      out = tf.slice(out, tf.stack([top, left, 0]), [self.size, self.size, 3])
    out.set_shape([self.size, self.size, 3])
    return out
