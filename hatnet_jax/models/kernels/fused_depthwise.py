"""SiLU -> depthwise kxk convolution -> SiLU as one native CPU kernel (silu_depthwise_silu.cc) with its VJP.

The inverted residual's middle runs on XLA's CPU backend as many full passes over the expanded map; the
C++ kernel does the forward in one read and one write and the backward in one more (BENCHMARKS.md has the
figures). It is built on first use (models/native.py: the system C++ compiler, a per-user cache). Without a
compiler (or if the build fails) `available()` is False with the reason in `unavailable_reason()`, and
layers.DepthwiseConv's 'auto' takes XLA's path instead.
"""
import jax

from hatnet_jax.models.kernels import native

_FWD, _BWD = 'hatnet_silu_depthwise_silu_fwd', 'hatnet_silu_depthwise_silu_bwd'
_KERNEL = native.Kernel('silu_depthwise_silu', ((_FWD, 'HatnetSiluDepthwiseSiluFwd'),
                                                 (_BWD, 'HatnetSiluDepthwiseSiluBwd')), 'SiLU -> depthwise -> SiLU')
available, unavailable_reason = _KERNEL.available, _KERNEL.unavailable_reason


MAX_KERNEL_SIZE = 7  # kMaxK of the C++ source


def usable(x, kernel_size: int) -> bool:
  """Whether 'auto' takes the kernel for `x`: CPU backend, one device (the custom call has no partitioning
  rule, so a batch sharded over several devices would be gathered), float32, an odd kernel size of at most
  MAX_KERNEL_SIZE, and the kernel available."""
  return x.ndim == 4 and kernel_size % 2 == 1 and kernel_size <= MAX_KERNEL_SIZE and _KERNEL.usable(x)


@jax.custom_vjp
def silu_depthwise_silu(x, kernel):
  """SiLU(depthwise_kxk(SiLU(x), kernel)) of a float32 NHWC map, kernel (k, k, C), k odd, same padding."""
  return _KERNEL.call(_FWD, jax.ShapeDtypeStruct(x.shape, x.dtype), x, kernel)


def _fwd(x, kernel):
  return silu_depthwise_silu(x, kernel), (x, kernel)


def _bwd(res, g):
  x, kernel = res
  out = (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(kernel.shape, kernel.dtype))
  return tuple(_KERNEL.call(_BWD, out, x, kernel, g.astype(x.dtype)))


silu_depthwise_silu.defvjp(_fwd, _bwd)
