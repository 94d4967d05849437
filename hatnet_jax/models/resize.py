"""Resizing of NHWC maps with the exact semantics of PyTorch's F.interpolate (what mmseg's `resize` calls).

jax.image.resize antialiases when it downsamples (torch does not) and has no 'nearest' with torch's
floor rule, so both are written out here. Sizes are static: the index/weight tables are built in NumPy.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=None)
def _nearest_index(size_in: int, size_out: int) -> np.ndarray:
  """torch 'nearest': src = min(floor(dst * (in / out)), in - 1), the scale and product in float32."""
  if size_out == size_in:
    return np.arange(size_out)
  scale = np.float32(size_in) / np.float32(size_out)  # torch computes the scale and product in float32
  src = np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(src, size_in - 1)


@functools.lru_cache(maxsize=None)
def _linear_matrix(size_in: int, size_out: int) -> np.ndarray:
  """(out, in) weights of torch 'bilinear' along one axis, align_corners=False, no antialias.

  src = (dst + 0.5) * in / out - 0.5, clamped below at 0; it blends the two neighbours floor(src) and
  floor(src) + 1 (clamped to in - 1). Downsampling also uses just these two taps, as torch does.
  """
  # In float32 as torch's kernels compute it (float64 here would differ from torch by up to ~5e-6).
  f32 = np.float32
  dst = np.arange(size_out, dtype=f32)
  src = np.maximum((f32(size_in) / f32(size_out)) * (dst + f32(0.5)) - f32(0.5), f32(0))
  lo = np.minimum(src.astype(np.int64), size_in - 1)
  hi = np.minimum(lo + 1, size_in - 1)
  frac = np.clip(src - lo.astype(f32), f32(0), f32(1))
  mat = np.zeros((size_out, size_in), f32)
  np.add.at(mat, (np.arange(size_out), lo), f32(1) - frac)
  np.add.at(mat, (np.arange(size_out), hi), frac)
  return mat


def nearest(x, size: tuple[int, int]):
  """F.interpolate(x, size, mode='nearest') of an NHWC map."""
  h, w = size
  x = jnp.take(x, _nearest_index(x.shape[1], h), axis=1)
  return jnp.take(x, _nearest_index(x.shape[2], w), axis=2)


def bilinear(x, size: tuple[int, int]):
  """F.interpolate(x, size, mode='bilinear', align_corners=False) of an NHWC map (no antialiasing).

  Applied as two small matmuls (one per axis) in x's dtype at full precision: on GPUs a float32 matmul
  may otherwise run in TF32, and the tables have only two non-zeros per row, so this costs little.
  """
  h, w = size
  if (h, w) == x.shape[1:3]:
    return x
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum('oh,bhwc->bowc', jnp.asarray(_linear_matrix(x.shape[1], h), x.dtype), x, precision=hi)
  return jnp.einsum('pw,bowc->bopc', jnp.asarray(_linear_matrix(x.shape[2], w), x.dtype), x, precision=hi)
