"""RandAugment in pure JAX with timm semantics (written for this port; no code copied from timm).

Spec strings follow timm: ``rand-m9-mstd0.5-inc1`` means

* ``n`` (default 2) ops per image, each drawn uniformly *with replacement* from the op set;
* each op is applied with probability ``p`` (default 0.5);
* magnitude ``m`` = 9 on timm's 0..10 scale, re-drawn per op as ``N(m, mstd)`` (``mstd`` > 100 means
  uniform(0, m)) and clipped to ``[0, mmax]`` (``mmax`` default 10);
* ``inc1`` selects the increasing-severity op set (Posterize/Solarize/Color/Contrast/Brightness/Sharpness
  variants whose distortion grows with the magnitude); signed ops (Rotate, Shear, Translate, the
  ``*Increasing`` enhancements) are negated with probability 0.5.

Images are float32 ``[H, W, 3]`` holding integer values 0..255 (what the host pipeline delivers) and
every op returns integer values 0..255 again, like the uint8 PIL images timm operates on, so ops compose
the same way. The pixel ops reproduce PIL's ImageOps / ImageEnhance integer arithmetic and the geometric
ops reproduce PIL's ``Image.transform(AFFINE)`` sampling (pixel-centre convention, bicubic a = -1 as
PIL's transform uses, samples falling outside the image take the fill colour, which is timm's
``img_mean`` = round(255 * mean) = (124, 116, 104) for ImageNet). tests/data/classification/test_augment.py compares
each op with PIL.

Implementation for accelerators: the batch is vmapped, so a per-example `switch` would evaluate every
op for every image. Instead the ops are grouped: every pixel op is a per-channel lookup table (computed
for all candidates, one gather applies the chosen one); Color and Sharpness are blends with a degenerate
image; Rotate/Shear/Translate are one affine resampling with a per-example matrix (identity otherwise).
One layer costs about four passes over the image plus one 16-tap resampling.
"""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import jax.scipy.special  # pylint: disable=unused-import

_LEVEL_DENOM = 10.0
IMAGENET_FILL = (124, 116, 104)

RAND_TRANSFORMS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd', 'Color',
    'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')
RAND_INCREASING_TRANSFORMS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing', 'SolarizeIncreasing',
    'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing',
    'SharpnessIncreasing', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')

_AFFINE_OPS = ('Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')
_COLOR_OPS = ('Color', 'ColorIncreasing')
_SHARP_OPS = ('Sharpness', 'SharpnessIncreasing')


def parse_spec(spec):
  """Parses a timm RandAugment string into a dict (None for '' / 'none')."""
  if not spec or spec.lower() == 'none':
    return None
  parts = spec.split('-')
  if parts[0] != 'rand':
    raise ValueError(f'RandAugment spec must start with "rand": {spec!r}')
  params = dict(num_layers=2, magnitude=9.0, magnitude_std=0.0, magnitude_max=_LEVEL_DENOM, prob=0.5,
                increasing=False)
  for part in parts[1:]:
    m = re.fullmatch(r'([a-z]+)(\d.*)', part)
    if not m:
      raise ValueError(f'Cannot parse {part!r} in RandAugment spec {spec!r}')
    key, val = m.groups()
    if key == 'mstd':
      std = float(val)
      params['magnitude_std'] = float('inf') if std > 100 else std
    elif key == 'mmax':
      params['magnitude_max'] = float(val)
    elif key == 'inc':
      params['increasing'] = bool(int(val))
    elif key == 'm':
      params['magnitude'] = float(val)
    elif key == 'n':
      params['num_layers'] = int(val)
    elif key == 'p':
      params['prob'] = float(val)
    else:  # 'w' (op weights) is not part of the recipe: refuse rather than silently ignore.
      raise ValueError(f'Unsupported RandAugment option {key!r} in {spec!r}')
  params['ops'] = RAND_INCREASING_TRANSFORMS if params['increasing'] else RAND_TRANSFORMS
  return params


# ---------------------------------------------------------------------------------------------------
# Pixel ops as lookup tables. `img`: float32 [H, W, 3], integer-valued 0..255. A LUT is int32 [3, 256].
# ---------------------------------------------------------------------------------------------------

# numpy, not jnp: a jnp array here would start the XLA backend at import time, before
# jax.distributed.initialize() can run in multi-host jobs.
_IDENTITY = np.arange(256, dtype=np.float32)


def to_gray(img):
  """PIL's RGB -> L: (19595 R + 38470 G + 7471 B + 0x8000) >> 16."""
  x = img.astype(jnp.int32)
  g = (19595 * x[..., 0] + 38470 * x[..., 1] + 7471 * x[..., 2] + 0x8000) >> 16
  return g.astype(jnp.float32)


def histogram(img):
  """Per-channel 256-bin histogram, int32 [3, 256]."""
  x = img.astype(jnp.int32).reshape(-1, 3)
  def one(c):
    return jnp.zeros((256,), jnp.int32).at[c].add(1)
  return jax.vmap(one, in_axes=1)(x)


def _blend_lut(degenerate, factor):
  """LUT of PIL Image.blend(degenerate, img, factor) for a constant degenerate value."""
  out = degenerate + factor * (_IDENTITY - degenerate)
  return jnp.floor(jnp.clip(out, 0.0, 255.0))


def autocontrast_lut(hist):
  """PIL ImageOps.autocontrast (cutoff 0): maps [lo, hi] of each channel to [0, 255].

  PIL evaluates int(v * 255 / (hi - lo) - lo * 255 / (hi - lo)) in float64; this is the exact floor
  ((v - lo) * 255) // (hi - lo) in integers, identical except where PIL's float64 rounding lands just
  below an integer (then PIL is 1 lower). Integer arithmetic keeps it exact on every backend.
  """
  v = jnp.arange(256, dtype=jnp.int32)
  present = hist > 0
  lo = jnp.min(jnp.where(present, v, 256), axis=1, keepdims=True)
  hi = jnp.max(jnp.where(present, v, -1), axis=1, keepdims=True)
  lut = jnp.clip(((v - lo) * 255) // jnp.maximum(hi - lo, 1), 0, 255).astype(jnp.float32)
  return jnp.where(hi > lo, lut, _IDENTITY)


def equalize_lut(hist):
  """PIL ImageOps.equalize: lut[i] = (step // 2 + sum(h[:i])) // step, step = (n - h[last]) // 255."""
  v = jnp.arange(256)
  last = jnp.max(jnp.where(hist > 0, v, -1), axis=1, keepdims=True)
  h_last = jnp.take_along_axis(hist, jnp.maximum(last, 0), axis=1)
  step = (jnp.sum(hist, axis=1, keepdims=True) - h_last) // 255
  cum = jnp.cumsum(hist, axis=1) - hist
  lut = (step // 2 + cum) // jnp.maximum(step, 1)
  lut = jnp.clip(lut, 0, 255).astype(jnp.float32)
  # PIL keeps the channel when it has <= 1 distinct value (then step == 0 too) or step == 0.
  return jnp.where(step > 0, lut, _IDENTITY)


def _int_arg(x):
  """timm's int(level * k) on a float32 level: the 1e-4 makes exact magnitudes (m9: 0.9 * 110 = 99)
  land on the same integer as timm's float64 arithmetic."""
  return jnp.floor(x + 1e-4)


def _pixel_luts(name, hist, gray_mean, level, sign):
  """LUT [3, 256] (or None) for the pixel op `name` at `level` = magnitude / 10."""
  ident = jnp.broadcast_to(_IDENTITY, (3, 256))
  if name == 'AutoContrast':
    return autocontrast_lut(hist)
  if name == 'Equalize':
    return equalize_lut(hist)
  if name == 'Invert':
    return 255.0 - ident
  if name in ('Posterize', 'PosterizeIncreasing'):
    bits = _int_arg(level * 4.0)
    if name == 'PosterizeIncreasing':
      bits = 4.0 - bits
    div = jnp.exp2(8.0 - jnp.clip(bits, 0.0, 8.0))
    return jnp.floor(ident / div) * div
  if name in ('Solarize', 'SolarizeIncreasing'):
    thresh = _int_arg(level * 256.0)
    if name == 'SolarizeIncreasing':
      thresh = 256.0 - thresh
    return jnp.where(ident < thresh, ident, 255.0 - ident)
  if name == 'SolarizeAdd':
    add = _int_arg(level * 110.0)
    return jnp.where(ident < 128.0, jnp.minimum(ident + add, 255.0), ident)
  if name in ('Contrast', 'ContrastIncreasing', 'Brightness', 'BrightnessIncreasing'):
    factor = enhance_factor(name, level, sign)
    deg = jnp.floor(gray_mean + 0.5) if name.startswith('Contrast') else 0.0
    return jnp.broadcast_to(_blend_lut(deg, factor), (3, 256))
  return None


def enhance_factor(name, level, sign):
  if name.endswith('Increasing'):
    return 1.0 + sign * level * 0.9
  return level * 1.8 + 0.1


def apply_lut(img, lut):
  idx = img.astype(jnp.int32)
  return jnp.stack([lut[c][idx[..., c]] for c in range(3)], axis=-1)


def blend(degenerate, img, factor):
  """PIL Image.blend(degenerate, img, factor) on integer-valued floats (clip, then truncate)."""
  return jnp.floor(jnp.clip(degenerate + factor * (img - degenerate), 0.0, 255.0))


def color(img, factor):
  return blend(to_gray(img)[..., None], img, factor)


def smooth(img):
  """PIL ImageFilter.SMOOTH (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1, / 13, rounded); border pixels kept."""
  p = img
  s = (p[:-2, :-2] + p[:-2, 1:-1] + p[:-2, 2:] + p[1:-1, :-2] + 5.0 * p[1:-1, 1:-1] + p[1:-1, 2:]
       + p[2:, :-2] + p[2:, 1:-1] + p[2:, 2:]) / 13.0
  s = jnp.clip(jnp.floor(s + 0.5), 0.0, 255.0)
  return img.at[1:-1, 1:-1].set(s)


def sharpness(img, factor):
  return blend(smooth(img), img, factor)


# ---------------------------------------------------------------------------------------------------
# Affine resampling with PIL's Image.transform(AFFINE) semantics. `matrix` = (a, b, c, d, e, f): the
# output pixel centred at (x + .5, y + .5) samples the input at (a x' + b y' + c, d x' + e y' + f).
# ---------------------------------------------------------------------------------------------------


def _cubic_weights(t):
  """PIL Geometry.c bicubic (a = -1) weights for taps -1, 0, 1, 2 at fractional offset t."""
  # v = p1 + t (p2 + t (p3 + t p4)) with p1 = v2, p2 = v3 - v1, p3 = 2(v1 - v2) + v3 - v4,
  # p4 = v2 - v1 - v3 + v4, rewritten as weights on (v1, v2, v3, v4).
  t2, t3 = t * t, t * t * t
  return (-t + 2 * t2 - t3, 1 - 2 * t2 + t3, t + t2 - t3, -t2 + t3)


def affine(img, matrix, fill, interpolation='bicubic'):
  h, w = img.shape[0], img.shape[1]
  a, b, c, d, e, f = matrix
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) + 0.5, jnp.arange(w, dtype=jnp.float32) + 0.5,
                        indexing='ij')
  xin = a * xs + b * ys + c
  yin = d * xs + e * ys + f
  inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
  fill = jnp.asarray(fill, jnp.float32)
  if interpolation == 'nearest':
    xi = jnp.clip(jnp.floor(xin).astype(jnp.int32), 0, w - 1)
    yi = jnp.clip(jnp.floor(yin).astype(jnp.int32), 0, h - 1)
    out = img[yi, xi]
    return jnp.where(inside[..., None], out, fill)
  xs_, ys_ = xin - 0.5, yin - 0.5
  x0, y0 = jnp.floor(xs_), jnp.floor(ys_)
  dx, dy = (xs_ - x0)[..., None], (ys_ - y0)[..., None]
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
  if interpolation == 'bilinear':
    offsets, wx, wy = (0, 1), (1 - dx, dx), (1 - dy, dy)
  elif interpolation == 'bicubic':
    offsets, wx, wy = (-1, 0, 1, 2), _cubic_weights(dx), _cubic_weights(dy)
  else:
    raise ValueError(f'Unknown interpolation {interpolation!r}')
  out = 0.0
  for i, oy in enumerate(offsets):
    yi = jnp.clip(y0 + oy, 0, h - 1)
    row = 0.0
    for j, ox in enumerate(offsets):
      xi = jnp.clip(x0 + ox, 0, w - 1)
      row = row + wx[j] * img[yi, xi]
    out = out + wy[i] * row
  out = jnp.floor(jnp.clip(out, 0.0, 255.0))  # PIL: clip, then (UINT8) truncation
  return jnp.where(inside[..., None], out, fill)


def affine_matrix(name, level, sign, h, w, translate_pct=0.45):
  """PIL-convention matrix for the geometric op `name`."""
  one, zero = jnp.float32(1.0), jnp.float32(0.0)
  if name == 'Rotate':
    # PIL Image.rotate(degrees): counter-clockwise about (w / 2, h / 2).
    angle = -(sign * level * 30.0) * (math.pi / 180.0)
    ca, sa = jnp.cos(angle), jnp.sin(angle)
    cx, cy = w / 2.0, h / 2.0
    return (ca, sa, ca * -cx + sa * -cy + cx, -sa, ca, -sa * -cx + ca * -cy + cy)
  if name == 'ShearX':
    return (one, sign * level * 0.3, zero, zero, one, zero)
  if name == 'ShearY':
    return (one, zero, zero, sign * level * 0.3, one, zero)
  if name == 'TranslateXRel':
    return (one, zero, sign * level * translate_pct * w, zero, one, zero)
  if name == 'TranslateYRel':
    return (one, zero, zero, zero, one, sign * level * translate_pct * h)
  raise ValueError(name)


# ---------------------------------------------------------------------------------------------------
# Reference single-op application (used by the tests and for clarity) and the fused per-layer step.
# ---------------------------------------------------------------------------------------------------


def apply_op(name, img, magnitude, sign=1.0, fill=IMAGENET_FILL, interpolation='bicubic'):
  """Applies one named op at `magnitude` (0..10) to one image."""
  level = jnp.asarray(magnitude, jnp.float32) / _LEVEL_DENOM
  sign = jnp.asarray(sign, jnp.float32)
  if name in _AFFINE_OPS:
    return affine(img, affine_matrix(name, level, sign, img.shape[0], img.shape[1]), fill,
                  interpolation)
  if name in _COLOR_OPS:
    return color(img, enhance_factor(name, level, sign))
  if name in _SHARP_OPS:
    return sharpness(img, enhance_factor(name, level, sign))
  hist = histogram(img) if name in ('AutoContrast', 'Equalize') else None
  gray_mean = jnp.mean(to_gray(img)) if name.startswith('Contrast') else None
  lut = _pixel_luts(name, hist, gray_mean, level, sign)
  if lut is None:
    raise ValueError(f'Unknown RandAugment op {name!r}')
  return apply_lut(img, lut)


def _layer(img, op, apply, magnitude, sign, ops, fill, interpolation):
  """One RandAugment layer on one image; `op` indexes `ops` (traced), applied if `apply`."""
  h, w = img.shape[0], img.shape[1]
  level = magnitude / _LEVEL_DENOM
  hist = histogram(img)
  gray = to_gray(img)
  gray_mean = jnp.mean(gray)
  ident_lut = jnp.broadcast_to(_IDENTITY, (3, 256))
  luts, affines = [], []
  eye = (jnp.float32(1), jnp.float32(0), jnp.float32(0), jnp.float32(0), jnp.float32(1),
         jnp.float32(0))
  for name in ops:
    lut = _pixel_luts(name, hist, gray_mean, level, sign)
    luts.append(ident_lut if lut is None else lut)
    affines.append(jnp.stack(affine_matrix(name, level, sign, h, w) if name in _AFFINE_OPS else eye))
  lut = jnp.stack(luts)[op]
  mat = jnp.stack(affines)[op]
  is_color = jnp.isin(op, jnp.array([i for i, n in enumerate(ops) if n in _COLOR_OPS] or [-1]))
  is_sharp = jnp.isin(op, jnp.array([i for i, n in enumerate(ops) if n in _SHARP_OPS] or [-1]))
  is_affine = jnp.isin(op, jnp.array([i for i, n in enumerate(ops) if n in _AFFINE_OPS] or [-1]))
  factor = jnp.stack([enhance_factor(n, level, sign) if n in _COLOR_OPS + _SHARP_OPS
                      else jnp.float32(1.0) for n in ops])[op]
  degenerate = jnp.where(is_color, gray[..., None], smooth(img))
  blended = blend(degenerate, img, factor)
  out = apply_lut(img, lut)
  out = jnp.where(is_color | is_sharp, blended, out)
  out = jnp.where(is_affine, affine(img, tuple(mat), fill, interpolation), out)
  return jnp.where(apply, out, img)


def rand_augment(img, key, params, fill=IMAGENET_FILL, interpolation='bicubic'):
  """RandAugment of one image (vmap it for a batch). `params` from `parse_spec` (None: identity).

  The layers run in a `lax.scan`, so the (large) layer graph is compiled once whatever `n`.
  """
  if params is None:
    return img
  ops = params['ops']
  n = params['num_layers']
  # One draw of 4 uniforms per layer (few random calls keep compilation fast).
  u = jax.random.uniform(key, (n, 4), jnp.float32, 1e-7, 1.0)
  op = jnp.minimum(jnp.floor(u[:, 0] * len(ops)).astype(jnp.int32), len(ops) - 1)
  apply = u[:, 1] < params['prob']
  std = params['magnitude_std']
  if std == float('inf'):
    mag = u[:, 2] * params['magnitude']
  elif std > 0:  # N(m, std) by inverse CDF
    mag = params['magnitude'] + std * jnp.sqrt(2.0) * jax.scipy.special.erfinv(2.0 * u[:, 2] - 1.0)
  else:
    mag = jnp.full((n,), params['magnitude'], jnp.float32)
  mag = jnp.clip(mag, 0.0, params['magnitude_max'])
  sign = jnp.where(u[:, 3] < 0.5, -1.0, 1.0)

  def body(x, layer):
    o, a, m, sg = layer
    return _layer(x, o, a, m, sg, ops, fill, interpolation), None

  img, _ = jax.lax.scan(body, img, (op, apply, mag, sign))
  return img
