"""GroupNorm with one group (HAT-Net's norm) as a native CPU kernel (group_norm.cc) with its VJP.

XLA's CPU backend runs it as separate reduction and element-wise passes; the kernel reads its input twice
(statistics, then the normalised output) and its backward reads the input and the incoming gradient twice
(BENCHMARKS.md has the figures). Built on first use like the other kernels (models/native.py);
layers.GroupNorm takes it where `usable()` says so.
"""
import jax
import numpy as np

from hatnet_jax.models.kernels import native

_FWD, _BWD = 'hatnet_group_norm_fwd', 'hatnet_group_norm_bwd'
_KERNEL = native.Kernel('group_norm', ((_FWD, 'HatnetGroupNormFwd'), (_BWD, 'HatnetGroupNormBwd')), 'GroupNorm')
available, unavailable_reason, usable = _KERNEL.available, _KERNEL.unavailable_reason, _KERNEL.usable


def _forward(x, scale, bias, eps):
  f32 = lambda shape: jax.ShapeDtypeStruct(shape, x.dtype)
  return _KERNEL.call(_FWD, (f32(x.shape), f32(x.shape[:1]), f32(x.shape[:1])), x, scale, bias, eps=np.float32(eps))


def _make_group_norm():
  def norm(x, scale, bias, eps):
    return _forward(x, scale, bias, eps)[0]

  def fwd(x, scale, bias, eps):
    y, mean, rstd = _forward(x, scale, bias, eps)
    return y, (x, scale, mean, rstd)

  def bwd(eps, res, g):
    del eps
    x, scale, mean, rstd = res
    outs = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (x, scale, scale))
    return tuple(_KERNEL.call(_BWD, outs, x, scale, mean, rstd, g.astype(x.dtype)))

  f = jax.custom_vjp(norm, nondiff_argnums=(3,))
  f.defvjp(fwd, bwd)
  return f


_group_norm = _make_group_norm()


def group_norm(x, scale, bias, eps: float):
  """(x - mean) / sqrt(var + eps) * scale + bias of a float32 NHWC map x, mean and (biased) variance over
  each image's H, W and C; scale and bias (C,) float32."""
  return _group_norm(x, scale, bias, float(eps))
