"""RoIAlign as mmcv's `RoIAlign(pool_mode='avg')` / torchvision.ops.roi_align, and mmdet's multi-level RoI
extraction (SingleRoIExtractor), as static-shape JAX.

The kernel averages, per output bin, grid_h x grid_w bilinear samples (grid = sampling_ratio, or with 0
the adaptive ceil(roi_size / output_size) per RoI and axis). Bilinear interpolation with the kernel's
border rules is separable (a sample outside in y or in x has weight 0; y and x clamp independently), so
a bin's average is Ay[bin_y, :] @ F @ Ax[bin_x, :]^T with Ay [R, oh, H] the 1-D weights averaged over the
bin's samples (divided by grid_h). Ay is built per output row h from the few samples of each bin that
can touch h (y in [h - 1, h + 1]: with the adaptive grid a bin's samples lie > 0.5 apart, so at most 5;
`_CANDIDATES` adds a margin for the estimate of the first one; a fixed sampling_ratio takes all its
samples), so its cost is R * oh * H * 8 without channels, exact whatever the data-dependent grid is.
Sample coordinates are computed in float32 in the kernel's operation order (no fused multiply-add, true
divisions: `exact.rounded`, `exact.divide`), so every border decision is the kernel's.

The contraction with F is the cost. `window=(kh, kw)` contracts only a static kh x kw window of F starting
at the RoI's first touched row/column (clamped at the border): R * (oh*kh*kw + oh*ow*kw) * C multiply-adds
and an R x kh x kw x C gathered window, exact whenever the RoI's support fits; the `*_with_overflow`
forms return how many RoIs did not fit (counted conservatively: a fixed sampling_ratio whose samples
straddle the whole map may count a RoI that fits). Without window the whole map is used: always exact.

Boxes get no gradient (as mmcv's RoIAlign: proposals are constants); features do, through the gather.
"""
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from hatnet_jax.structures import boxes as box_ops
from hatnet_jax.structures.exact import divide, rounded

# Candidate samples per (bin, row) with the adaptive grid: <= 5 touch a row, plus a margin on each side
# for the float estimate of the first one.
_CANDIDATES = 8
HIGHEST = jax.lax.Precision.HIGHEST


class Axis(NamedTuple):
  """One axis of every RoI as the kernel computes it: float32 start and bin size, int32 grid."""
  start: jax.Array
  bin_size: jax.Array
  grid: jax.Array


def axis_geometry(lo: jax.Array, hi: jax.Array, scale: jax.Array, size: int, sampling_ratio: int,
                  aligned: bool) -> Axis:
  """The kernel's roi_start, bin_size and roi_bin_grid along one axis for coordinates lo, hi [R]."""
  offset = jnp.float32(0.5 if aligned else 0.0)
  start = rounded(lo * scale) - offset
  length = rounded(hi * scale) - offset - start
  if not aligned:  # legacy mode: malformed RoIs become 1 pixel
    length = jnp.maximum(length, 1.0)
  bin_size = divide(length, jnp.float32(size))
  grid = jnp.full(lo.shape, sampling_ratio, jnp.int32) if sampling_ratio > 0 else \
      jnp.ceil(bin_size).astype(jnp.int32)
  return Axis(start, bin_size, grid)


def _sample(axis: Axis, p: jax.Array, k: jax.Array) -> jax.Array:
  """The kernel's sample coordinate start + p * bin + (k + .5) * bin / grid (axis fields broadcast)."""
  grid = jnp.maximum(axis.grid, 1).astype(jnp.float32)
  return (axis.start + rounded(p * axis.bin_size)) + divide(rounded((k + 0.5) * axis.bin_size), grid)


def _bilinear(y: jax.Array, extent: jax.Array):
  """The kernel's 1-D border rules: (low, high, w_low, w_high, inside) for coordinates y."""
  inside = (y >= -1.0) & (y <= extent)
  y = jnp.maximum(y, 0.0)
  low = jnp.floor(y).astype(jnp.int32)
  clamp = low >= extent - 1
  low = jnp.where(clamp, extent - 1, low)
  y = jnp.where(clamp, low.astype(jnp.float32), y)
  ly = y - low.astype(jnp.float32)
  return low, jnp.where(clamp, low, low + 1), 1.0 - ly, ly, inside


def axis_weights(axis: Axis, size: int, extent: jax.Array, origin: jax.Array, length: int,
                 sampling_ratio: int) -> jax.Array:
  """[R, size, length]: row origin + i's weight in each output bin, averaged over the bin's samples.

  extent (the map's rows, per RoI or scalar) and origin [R] are int32; rows >= extent weigh 0."""
  sh = lambda a: a[:, None, None, None]  # [R] -> [R, 1, 1, 1]
  p = jnp.arange(size, dtype=jnp.float32)[None, :, None, None]
  h = sh(origin) + jnp.arange(length, dtype=jnp.int32)[None, None, :, None]
  grid = sh(axis.grid)
  if sampling_ratio > 0:  # a static grid: every sample is a candidate of every row
    k = jnp.arange(sampling_ratio, dtype=jnp.int32)[None, None, None, :]
  else:
    first = axis.start[:, None] + rounded(p[..., 0, 0] * axis.bin_size[:, None])  # [R, size]
    step = jnp.where(axis.grid > 0, divide(axis.bin_size, jnp.maximum(axis.grid, 1).astype(jnp.float32)), 1.0)
    est = divide(h.astype(jnp.float32) - 1.0 - first[..., None, None], sh(step)) - 0.5
    est = jnp.clip(jnp.floor(est) - 1.0, 0.0, jnp.maximum(grid - 1, 0).astype(jnp.float32))
    k = est.astype(jnp.int32) + jnp.arange(_CANDIDATES, dtype=jnp.int32)
  y = _sample(Axis(*(sh(a) for a in axis)), p, k.astype(jnp.float32))
  low, high, w_low, w_high, inside = _bilinear(y, extent if jnp.ndim(extent) == 0 else sh(extent))
  w = jnp.where(low == h, w_low, 0.0) + jnp.where(high == h, w_high, 0.0)
  w = jnp.where((k < grid) & inside, w, 0.0)
  return divide(jnp.sum(w, axis=-1), jnp.maximum(grid[..., 0], 1).astype(jnp.float32))


def axis_support(axis: Axis, size: int, extent: jax.Array):
  """(first, last, nonempty) [R]: the rows the RoI's samples may touch with nonzero weight."""
  y_min = _sample(axis, jnp.float32(0), jnp.float32(0))
  y_max = _sample(axis, jnp.float32(size - 1), (axis.grid - 1).astype(jnp.float32))
  nonempty = (axis.grid > 0) & (y_max >= -1.0) & (y_min <= extent)
  first = jnp.minimum(jnp.floor(jnp.maximum(y_min, 0.0)).astype(jnp.int32), extent - 1)
  top = jnp.maximum(y_max, 0.0)
  low = jnp.floor(top).astype(jnp.int32)
  last = jnp.where(low >= extent - 1, extent - 1, low + (top > low).astype(jnp.int32))
  return first, last, nonempty


def window_origin(axis: Axis, size: int, extent: jax.Array, length: int):
  """(origin, fits, nonempty) [R]: the window's first row (first touched, clamped so it stays on the
  map), whether every touched row lies inside the window, whether any row is touched."""
  first, last, nonempty = axis_support(axis, size, extent)
  origin = jnp.clip(first, 0, jnp.maximum(extent - length, 0))
  return origin, last < origin + length, nonempty


def _check(output_size, sampling_ratio, window):
  oh, ow = output_size
  if not all(isinstance(v, int) and v > 0 for v in (oh, ow)):
    raise ValueError(f'output_size must be two positive ints (oh, ow), got {output_size}')
  if not isinstance(sampling_ratio, int) or sampling_ratio < 0:
    raise ValueError(f'sampling_ratio must be an int >= 0 (0: adaptive), got {sampling_ratio!r}')
  if window is not None and (len(window) != 2 or not all(isinstance(v, int) and v > 0 for v in window)):
    raise ValueError(f'window must be None or two positive ints (kh, kw), got {window!r}')
  return int(oh), int(ow)


class Rois(NamedTuple):
  """Per-RoI geometry on its own map: y and x axes, map extents (int32 [R]) and flat base offsets."""
  y: Axis
  x: Axis
  height: jax.Array
  width: jax.Array
  base: jax.Array


def roi_geometry(boxes, scale, height, width, base, output_size, sampling_ratio, aligned) -> Rois:
  """Rois for boxes [R, 4] at spatial scale `scale` (scalar or [R]) on maps height x width [R] stored
  from flat offset base [R]; boxes are constants (no gradient, as mmcv's rois)."""
  boxes = jax.lax.stop_gradient(boxes)
  oh, ow = output_size
  y = axis_geometry(boxes[:, 1], boxes[:, 3], scale, oh, sampling_ratio, aligned)
  x = axis_geometry(boxes[:, 0], boxes[:, 2], scale, ow, sampling_ratio, aligned)
  return Rois(y, x, height, width, base)


def windowed_pool(flat: jax.Array, rois: Rois, output_size, window, sampling_ratio: int, precision=HIGHEST):
  """([R, oh, ow, C], overflow count) from `flat` [N, C], every RoI's map stored row-major at its base."""
  (oh, ow), (kh, kw) = output_size, window
  oy, fy, ny = window_origin(rois.y, oh, rois.height, kh)
  ox, fx, nx = window_origin(rois.x, ow, rois.width, kw)
  ay = axis_weights(rois.y, oh, rois.height, oy, kh, sampling_ratio)  # [R, oh, kh]
  ax = axis_weights(rois.x, ow, rois.width, ox, kw, sampling_ratio)  # [R, ow, kw]
  # Rows/columns past the map weigh 0; clamping their indices keeps the gather on the RoI's own map.
  rows = jnp.minimum(oy[:, None] + jnp.arange(kh), rois.height[:, None] - 1)
  cols = jnp.minimum(ox[:, None] + jnp.arange(kw), rois.width[:, None] - 1)
  index = rois.base[:, None, None] + rows[:, :, None] * rois.width[:, None, None] + cols[:, None, :]
  win = jnp.take(flat, index, axis=0)  # [R, kh, kw, C]
  out = jnp.einsum('rpi,rijc->rpjc', ay, win, precision=precision)
  out = jnp.einsum('rqj,rpjc->rpqc', ax, out, precision=precision)
  return out, jnp.sum(ny & nx & ~(fy & fx)).astype(jnp.int32)  # a RoI off the map in y or x reads nothing


def dense_pool(feature: jax.Array, rois: Rois, output_size, sampling_ratio: int, precision=HIGHEST):
  """[R, oh, ow, C] against the whole map feature [H, W, C] (every RoI on it): exact, H*W per RoI."""
  (oh, ow), (height, width) = output_size, feature.shape[:2]
  zero = jnp.zeros_like(rois.base)
  ay = axis_weights(rois.y, oh, rois.height, zero, height, sampling_ratio)
  ax = axis_weights(rois.x, ow, rois.width, zero, width, sampling_ratio)
  out = jnp.einsum('rph,hwc->rpwc', ay, feature.astype(jnp.float32), precision=precision)
  return jnp.einsum('rqw,rpwc->rpqc', ax, out, precision=precision)


def roi_align_with_overflow(feature: jax.Array, boxes: jax.Array, output_size: Sequence[int],
                            spatial_scale: float, sampling_ratio: int = 0, aligned: bool = True,
                            window: Optional[Sequence[int]] = None, precision=HIGHEST):
  """([R, oh, ow, C] float32, int32 count of RoIs whose support did not fit the window; 0 without one).

  feature [H, W, C] (one image: vmap for a batch), boxes [R, 4] xyxy in the coordinates that
  spatial_scale maps onto the feature. See `roi_align`."""
  feature = jnp.asarray(feature)
  if feature.ndim != 3:
    raise ValueError(f'feature must be [H, W, C] (one image; vmap over a batch), got shape {feature.shape}')
  boxes = box_ops.as_boxes('boxes', boxes)
  if boxes.ndim != 2:
    raise ValueError(f'boxes must be [R, 4], got shape {boxes.shape}')
  output_size = _check(tuple(output_size), sampling_ratio, window)
  height, width, channels = feature.shape
  n = boxes.shape[0]
  rois = roi_geometry(boxes, jnp.float32(spatial_scale), jnp.full(n, height, jnp.int32),
               jnp.full(n, width, jnp.int32), jnp.zeros(n, jnp.int32), output_size, sampling_ratio, aligned)
  if window is None:
    return dense_pool(feature, rois, output_size, sampling_ratio, precision), jnp.int32(0)
  window = (min(window[0], height), min(window[1], width))
  flat = feature.astype(jnp.float32).reshape(height * width, channels)
  return windowed_pool(flat, rois, output_size, window, sampling_ratio, precision)


def roi_align(feature: jax.Array, boxes: jax.Array, output_size: Sequence[int], spatial_scale: float,
              sampling_ratio: int = 0, aligned: bool = True, window: Optional[Sequence[int]] = None,
              precision=HIGHEST) -> jax.Array:
  """[R, oh, ow, C] float32: mmcv RoIAlign 'avg' / torchvision.ops.roi_align of every box on feature.

  aligned: the -0.5 pixel offset (mmdet's default); sampling_ratio 0: ceil(roi_size / output_size)
  samples per bin and axis, per RoI. window=(kh, kw): contract only a kh x kw window of the map at the
  RoI (exact when its support fits; `roi_align_with_overflow` counts those that do not). precision:
  of the contractions (HIGHEST: float32, no TF32 on GPU)."""
  return roi_align_with_overflow(feature, boxes, output_size, spatial_scale, sampling_ratio, aligned, window,
                                 precision)[0]


# Multi-level extraction (mmdet's SingleRoIExtractor with Mask R-CNN's RoIAlign layers).
#
# Default window 42 x 42, why: the level rule puts a RoI on level l < top only when sqrt(w*h) < 28 *
# stride_l (finest_scale 56, strides 4 * 2**l), and a RoI h / stride rows tall touches at most
# ceil(h / stride) + 2 rows, so 42 is exact for every such RoI of aspect ratio up to (40 / 28)**2 = 2.04
# (the RPN anchors' 0.5 / 1 / 2; flatter RoIs smaller than the level's maximum fit too), and it holds the
# top level's map whole on both canvases (stride 32: 25 x 42 and 42 x 25), so top-level RoIs of any size
# are exact. Cost per image (C 256, float32; multiply-adds oh*kh*kw*C + oh*ow*kw*C per RoI, gathered
# window kh*kw*C*4 bytes = 1.81 MB per RoI; the weights Ay/Ax are ~R*oh*42*8 elements, negligible):
#   train, 512 RoIs 7x7:   1.89 G multiply-adds, windows 0.92 GB (the backward scatters as much)
#   test, 1000 RoIs 7x7:   3.69 G multiply-adds, windows 1.81 GB
#   masks, 128 RoIs 14x14: 1.08 G multiply-adds, windows 0.23 GB
# (XLA's own count of the compiled forward at 800x1344: 4.10 / 8.00 / 2.26 GFLOP, temporaries 1.08 / 2.11 /
# 0.31 GB.) Without window (whole maps, per level for every RoI) the 7x7 train case alone would be ~84 G
# multiply-adds: sum over levels of R*oh*H*W*C. A caller short of memory can lax.map over chunks of
# RoIs: the cost is per RoI.
DEFAULT_WINDOW = (42, 42)


def map_roi_levels(boxes: jax.Array, num_levels: int, finest_scale: float = 56.0) -> jax.Array:
  """int32 [R]: mmdet's SingleRoIExtractor.map_roi_levels, floor(log2(sqrt(w*h) / finest_scale + 1e-6))
  clamped to [0, num_levels - 1], computed as comparisons with powers of two (log2 is exact there and
  monotone) on the same float32 value, so a box on a level boundary lands where mmdet puts it. Flipped
  boxes (negative area; NaN in mmdet) go to level 0."""
  boxes = box_ops.as_boxes('boxes', boxes)
  if not isinstance(num_levels, int) or num_levels < 1:
    raise ValueError(f'num_levels must be a positive int, got {num_levels!r}')
  scale = jnp.sqrt(rounded((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])))
  value = divide(scale, jnp.float32(finest_scale)) + jnp.float32(1e-6)
  levels = jnp.zeros(value.shape, jnp.int32)
  for level in range(1, num_levels):
    levels = levels + (value >= 2.0 ** level).astype(jnp.int32)
  return levels


def multilevel_roi_align(features: Sequence[jax.Array], boxes: jax.Array, strides: Sequence[int],
                         output_size: Sequence[int], sampling_ratio: int = 0,
                         window: Optional[Sequence[int]] = DEFAULT_WINDOW, finest_scale: float = 56.0,
                         precision=HIGHEST):
  """([R, oh, ow, C] float32, int32 overflow count): mmdet's SingleRoIExtractor with RoIAlign(aligned=True).

  features: one [H_l, W_l, C] map per level (one image: vmap over a batch); boxes [R, 4] in canvas
  pixels; each RoI is pooled from its own level (`map_roi_levels`) at spatial_scale 1 / stride. With a
  window, all levels sit in one flat [sum H_l*W_l, C] buffer and each RoI gathers its kh x kw window at
  its level's offset: one level's work per RoI (see DEFAULT_WINDOW for the figures); the count says how
  many RoIs' support did not fit. window=None: every level's whole map for every RoI (exact, num_levels
  times a full-map cost; for tests and small maps)."""
  features = [jnp.asarray(f) for f in features]
  if not features or len(features) != len(strides) or any(f.ndim != 3 for f in features) or \
      len({f.shape[-1] for f in features}) != 1:
    raise ValueError('features must be one [H, W, C] map per stride with equal C (one image; vmap over a '
                     f'batch); got shapes {[f.shape for f in features]} for strides {list(strides)}')
  boxes = box_ops.as_boxes('boxes', boxes)
  if boxes.ndim != 2:
    raise ValueError(f'boxes must be [R, 4], got shape {boxes.shape}')
  output_size = _check(tuple(output_size), sampling_ratio, window)
  levels = map_roi_levels(boxes, len(features), finest_scale)
  pick = lambda values, dtype: jnp.asarray(values, dtype)[levels]
  heights = [f.shape[0] for f in features]
  widths = [f.shape[1] for f in features]
  scales = [1.0 / s for s in strides]
  if window is None:
    out = 0.0
    n = boxes.shape[0]
    for l, feature in enumerate(features):
      rois = roi_geometry(boxes, jnp.float32(scales[l]), jnp.full(n, heights[l], jnp.int32),
                   jnp.full(n, widths[l], jnp.int32), jnp.zeros(n, jnp.int32), output_size, sampling_ratio, True)
      pooled = dense_pool(feature, rois, output_size, sampling_ratio, precision)
      out = out + jnp.where((levels == l)[:, None, None, None], pooled, 0.0)
    return out, jnp.int32(0)
  offsets = [sum(h * w for h, w in zip(heights[:l], widths[:l])) for l in range(len(features))]
  flat = jnp.concatenate([f.astype(jnp.float32).reshape(-1, f.shape[-1]) for f in features], axis=0)
  rois = roi_geometry(boxes, pick(scales, jnp.float32), pick(heights, jnp.int32), pick(widths, jnp.int32),
               pick(offsets, jnp.int32), output_size, sampling_ratio, True)
  window = (min(window[0], max(heights)), min(window[1], max(widths)))
  return windowed_pool(flat, rois, output_size, window, sampling_ratio, precision)
