"""mmdetection 3.3.0's AnchorGenerator as RetinaNet configures it: anchors per feature level and their
valid flags.

Anchors depend only on the (static) feature sizes, so they are NumPy float32 constants computed with
mmdet's float32 operation order (bit-equal to `grid_priors`). Order within a level: location-major
(row y, then column x), then the A = len(ratios) * scales_per_octave anchors of a location with the ratio
outer and the scale inner (mmdet's `scale_major=True` layout). This is the order of a head's output
channels [H, W, A * C] reshaped to [H * W * A, C].
"""
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

RETINANET_STRIDES = (8, 16, 32, 64, 128)
RETINANET_RATIOS = (0.5, 1.0, 2.0)


def _octave_scales(octave_base_scale: float, scales_per_octave: int) -> np.ndarray:
  """mmdet: [2 ** (i / n) for i < n] * octave_base_scale in float64, then a float32 tensor."""
  if scales_per_octave < 1:
    raise ValueError(f'scales_per_octave must be >= 1, got {scales_per_octave}')
  octave = np.array([2 ** (i / scales_per_octave) for i in range(scales_per_octave)])
  return (octave * octave_base_scale).astype(np.float32)


def base_anchors(stride: int, octave_base_scale: float = 4, scales_per_octave: int = 3,
                 ratios: Sequence[float] = RETINANET_RATIOS, center_offset: float = 0.0) -> np.ndarray:
  """[A, 4] float32 anchors of one location at the origin (mmdet `gen_single_level_base_anchors`).

  base size = stride; for ratio r (= h / w) and scale s: w = stride / sqrt(r) * s, h = stride * sqrt(r)
  * s, centred at center_offset * stride. Row index = ratio_index * scales_per_octave + scale_index.
  """
  if not 0 <= center_offset <= 1:
    raise ValueError(f'center_offset must be in [0, 1] (mmdet), got {center_offset}')
  scales = _octave_scales(octave_base_scale, scales_per_octave)
  h_ratios = np.sqrt(np.asarray(ratios, np.float32))
  w_ratios = np.float32(1) / h_ratios
  ws = (np.float32(stride) * w_ratios[:, None] * scales[None, :]).reshape(-1)
  hs = (np.float32(stride) * h_ratios[:, None] * scales[None, :]).reshape(-1)
  center = np.float32(center_offset * stride)
  half_w, half_h = np.float32(0.5) * ws, np.float32(0.5) * hs
  return np.stack([center - half_w, center - half_h, center + half_w, center + half_h], axis=-1)


def _check_levels(feature_hw: Sequence[Sequence[int]], strides: Sequence[int]) -> None:
  if len(feature_hw) != len(strides):
    raise ValueError(f'one stride per feature level: got {len(feature_hw)} feature sizes {list(feature_hw)} '
                     f'and {len(strides)} strides {list(strides)}')
  for hw in feature_hw:
    if len(hw) != 2 or any(not isinstance(n, (int, np.integer)) or n < 1 for n in hw):
      raise ValueError(f'feature sizes must be static (h, w) pairs of positive ints, got {list(feature_hw)}')


def grid_anchors(feature_hw: Sequence[Sequence[int]], strides: Sequence[int] = RETINANET_STRIDES,
                 octave_base_scale: float = 4, scales_per_octave: int = 3,
                 ratios: Sequence[float] = RETINANET_RATIOS, center_offset: float = 0.0) -> list[np.ndarray]:
  """Per level, [h * w * A, 4] float32 anchors of a feature map (h, w) at that level's stride (mmdet
  `AnchorGenerator.grid_priors`): the base anchors shifted by (x * stride, y * stride), location-major."""
  _check_levels(feature_hw, strides)
  out = []
  for (h, w), stride in zip(feature_hw, strides):
    base = base_anchors(stride, octave_base_scale, scales_per_octave, ratios, center_offset)
    shift_x = np.arange(w, dtype=np.float32) * np.float32(stride)
    shift_y = np.arange(h, dtype=np.float32) * np.float32(stride)
    xx, yy = np.tile(shift_x, h), np.repeat(shift_y, w)
    shifts = np.stack([xx, yy, xx, yy], axis=-1)
    out.append((base[None, :, :] + shifts[:, None, :]).reshape(-1, 4))
  return out


def num_base_anchors(scales_per_octave: int = 3, ratios: Sequence[float] = RETINANET_RATIOS) -> int:
  """A, the anchors per location."""
  return scales_per_octave * len(ratios)


def valid_flags(feature_hw: Sequence[Sequence[int]], strides: Sequence[int], valid_hw: jax.Array,
                num_anchors: int = 9) -> list[jax.Array]:
  """Per level, [B, h * w * A] bool: which anchors lie on the image rather than on batch padding.

  mmdet `AnchorGenerator.valid_flags` with `pad_shape` = valid_hw (the image's resized size padded up to
  the size divisor, 32 for RetinaNet): a location (y, x) is valid iff y < ceil(valid_h / stride) and
  x < ceil(valid_w / stride); all A anchors of a location share its flag. `valid_hw` [B, 2] (h, w) may be
  traced (integers, or floats holding integers); feature sizes and strides are static.
  """
  _check_levels(feature_hw, strides)
  valid_hw = jnp.asarray(valid_hw)
  if valid_hw.ndim != 2 or valid_hw.shape[-1] != 2:
    raise ValueError(f'valid_hw must be [B, 2] (h, w) per image, got shape {valid_hw.shape}')
  valid_hw = valid_hw.astype(jnp.int32)
  out = []
  for (h, w), stride in zip(feature_hw, strides):
    rows = jnp.minimum((valid_hw[:, 0] + stride - 1) // stride, h)  # ceil, exact on integers
    cols = jnp.minimum((valid_hw[:, 1] + stride - 1) // stride, w)
    flags = (jnp.arange(h)[None, :, None] < rows[:, None, None]) & (jnp.arange(w)[None, None, :] < cols[:, None, None])
    out.append(jnp.repeat(flags.reshape(flags.shape[0], h * w), num_anchors, axis=1))
  return out
