"""RandomResizedCrop's resize on the accelerator, for crops shipped zero-padded in a fixed canvas.

With ``config.data.device_resize = C`` the host decodes only the crop window (fused with JPEG decoding)
and sends it as it is, in the top-left corner of a ``[C, C, 3]`` uint8 canvas with its height and width;
this module resizes each window to ``[S, S]`` on the device. On this repo's 2-core CPU the host's
antialiased resize (TF's `ScaleAndTranslate`) cost more than the decode (2.5 vs 1.6 ms per ImageNet-sized
image; `benchmarks/input_pipeline.py`), and a GPU host has ~16 cores to feed thousands of images per
second; on the device the resize is two small matrix products per image.

The numbers are TF's `ScaleAndTranslate` (the host path's resize, which follows PIL's antialiased
kernels): output pixel ``i`` samples ``(i + 0.5) * n / S - 0.5`` of the ``n`` valid input pixels, the
kernel is widened by ``n / S`` when shrinking (antialias), and each output's weights are renormalised
over the valid pixels (so the zero padding never contributes). Hand-written rather than
`jax.image.scale_and_translate` because that takes the input extent from the array's static shape,
and here it differs per image (traced). Matmuls run at full float32 precision (no TF32/bf16 passes on
GPU/TPU), then round half to even and clip to [0, 255] like the host path.
"""
import math

import jax
import jax.numpy as jnp

_BLOCK = 32  # output rows (columns) per matrix product


def _keys_cubic(x):
  """Keys' cubic convolution kernel with a = -0.5 (PIL's and TF's 'bicubic'), of |x|."""
  return jnp.where(x < 1.0, ((1.5 * x - 2.5) * x) * x + 1.0,
                   jnp.where(x < 2.0, ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0, 0.0))


def _triangle(x):
  return jnp.maximum(0.0, 1.0 - x)


_KERNELS = {'bicubic': (_keys_cubic, 2.0), 'bilinear': (_triangle, 1.0)}  # (kernel of |x|, its radius)
INTERPOLATIONS = tuple(_KERNELS)


def weights(valid, out_size, canvas, interpolation='bicubic', antialias=True):
  """[out_size, canvas] float32 resampling weights of one axis whose first `valid` pixels are the image.

  `valid` may be traced (a scalar int); rows sum to 1 over the valid pixels, columns >= valid are 0.
  """
  kernel = _KERNELS[interpolation][0]
  n = jnp.asarray(valid, jnp.float32)
  inv_scale = n / out_size
  kernel_scale = jnp.maximum(inv_scale, 1.0) if antialias else 1.0
  sample = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * inv_scale - 0.5
  source = jnp.arange(canvas, dtype=jnp.float32)
  w = kernel(jnp.abs(sample[:, None] - source[None, :]) / kernel_scale)
  w = jnp.where(source[None, :] < n, w, 0.0)
  total = jnp.sum(w, axis=1, keepdims=True)
  return w / jnp.where(total != 0, total, 1.0)


def _slab(canvas, out_size, radius):
  """Input rows that one block of output rows can reach (at most), a multiple of 8, <= canvas."""
  inv_scale = canvas / out_size  # the largest window is the whole canvas
  reach = _BLOCK * inv_scale + 2 * radius * max(inv_scale, 1.0) + 2
  return min(canvas, 8 * math.ceil(reach / 8))


def _resize_axis(x, axis, valid, size, interpolation, antialias):
  """Resizes `axis` (0 or 1) of x [H, W, 3] (its first `valid` entries) to `size`, block by block: each
  block of _BLOCK outputs multiplies only the slab of inputs its kernels reach (the weights are exactly
  zero elsewhere): ~6x fewer multiply-adds than the whole [size, C] matrix for C = 512, size = 224."""
  canvas = x.shape[axis]
  w = weights(valid, size, canvas, interpolation, antialias)
  radius = _KERNELS[interpolation][1]
  slab = _slab(canvas, size, radius)
  blocks = -(-size // _BLOCK)
  w = jnp.pad(w, ((0, blocks * _BLOCK - size), (0, 0)))
  inv_scale = jnp.asarray(valid, jnp.float32) / size
  reach = radius * (jnp.maximum(inv_scale, 1.0) if antialias else 1.0)
  spec = 'oi,iwc->owc' if axis == 0 else 'oi,hic->hoc'
  out = []
  for b in range(blocks):
    first = (b * _BLOCK + 0.5) * inv_scale - 0.5 - reach
    start = jnp.clip(jnp.floor(first).astype(jnp.int32), 0, canvas - slab)
    wb = jax.lax.dynamic_slice_in_dim(w[b * _BLOCK:(b + 1) * _BLOCK], start, slab, axis=1)
    xb = jax.lax.dynamic_slice_in_dim(x, start, slab, axis=axis).astype(jnp.float32)
    out.append(jnp.einsum(spec, wb, xb, precision=jax.lax.Precision.HIGHEST))
  return jax.lax.slice_in_dim(jnp.concatenate(out, axis=axis), 0, size, axis=axis)


def resize_window(canvas_img, height, width, size, interpolation='bicubic', antialias=True):
  """The window ``[:height, :width]`` of one canvas ``[C, C, 3]`` resized to ``[size, size, 3]``.

  Returns float32 with integer values in [0, 255] (what the host path's uint8 would hold).
  """
  x = _resize_axis(canvas_img, 0, height, size, interpolation, antialias)  # [size, C, 3]
  x = _resize_axis(x, 1, width, size, interpolation, antialias)
  return jnp.clip(jnp.round(x), 0.0, 255.0)
