"""Building blocks of HAT-Net that Flax does not provide as such: depthwise conv, drop path, pooling, norms."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from hatnet_jax.models.kernels import fused_depthwise, fused_group_norm

Dtype = jnp.dtype
init_kernel = nn.initializers.truncated_normal(stddev=0.02)  # timm's trunc_normal_(std=.02), cut at +-2 std


class GroupNorm(nn.GroupNorm):
  """nn.GroupNorm (same parameters) that runs a one-group norm of a float32 NHWC map as the native CPU kernel
  (models/fused_group_norm.py) where `impl` says so: 'auto' on one CPU device with float32 parameters,
  'native' always (float32 only), 'xla' never."""
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x, *, mask=None):
    if self.impl not in ('auto', 'native', 'xla'):
      raise ValueError(f"norm_impl must be 'auto', 'native' or 'xla', got {self.impl!r}")
    fits = (mask is None and x.ndim == 4 and self.num_groups == 1 and self.use_scale and self.use_bias
            and x.dtype == jnp.float32 and self.param_dtype == jnp.float32 and self.dtype == jnp.float32)
    if self.impl == 'native' and not (fits and fused_group_norm.available()):
      raise ValueError("norm_impl 'native' normalises float32 NHWC maps with one group and float32 parameters; "
                       f'got {x.dtype} {x.shape}, parameters {jnp.dtype(self.param_dtype)}'
                       f'{"" if fused_group_norm.available() else ", " + fused_group_norm.unavailable_reason()}'
                       ": use 'auto'")
    if self.impl == 'native' or (self.impl == 'auto' and fits and fused_group_norm.usable(x)):
      c = x.shape[-1]
      scale = self.param('scale', self.scale_init, (c,), self.param_dtype)
      bias = self.param('bias', self.bias_init, (c,), self.param_dtype)
      return fused_group_norm.group_norm(x, scale, bias, self.epsilon)
    return super().__call__(x, mask=mask)


def group_norm(name: str | None = None, param_dtype=jnp.float32, impl: str = 'auto') -> GroupNorm:
  """The official GroupNorm(1, C, eps=1e-6): one group over (H, W, C), per-channel affine, computed in f32."""
  # Two-pass variance (use_fast_variance=False) matches PyTorch to ~1e-7 where E[x^2]-E[x]^2 loses digits
  # on maps with a large mean (residual streams deep in the network).
  return GroupNorm(num_groups=1, epsilon=1e-6, dtype=jnp.float32, param_dtype=param_dtype,
                   use_fast_variance=False, impl=impl, name=name)


class Pointwise(nn.Dense):
  """A 1x1 convolution of the official model: nn.Dense over the channel axis of an NHWC map (same params).

  The map is flattened to (tokens, C) first: XLA's CPU backend computes the kernel gradient of a
  contraction over (B, H, W) 2-3x slower than the same matmul over one flattened axis (a free reshape).
  """

  def __call__(self, x):
    y = super().__call__(x.reshape(-1, x.shape[-1]))
    return y.reshape(x.shape[:-1] + (self.features,))


def dense(features: int, *, use_bias: bool = True, dtype: Dtype, param_dtype: Dtype, name: str | None = None):
  """A 1x1 convolution (see Pointwise), truncated-normal initialised as in the official model."""
  return Pointwise(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, kernel_init=init_kernel,
                   name=name)


def xla_depthwise_impl() -> str:
  """XLA's own depthwise path for this backend: 'shift' on CPU (its grouped convolution is 5-15x slower
  there), 'conv' elsewhere (cuDNN's depthwise kernels are fast)."""
  return 'shift' if jax.default_backend() == 'cpu' else 'conv'


class DepthwiseConv(nn.Module):
  """kxk depthwise convolution, stride 1, same padding, no bias. Kernel layout (k, k, 1, C) as flax.linen.Conv.

  silu_around: compute SiLU(conv(SiLU(x))), the middle of HAT-Net's inverted residual.
  impl 'shift' computes the convolution as k*k shifted multiply-adds, 'conv' as a grouped XLA convolution,
  'native' (silu_around, float32, k <= 7, CPU only) the whole SiLU -> conv -> SiLU as one C++ kernel with its own
  gradient (models/fused_depthwise.py). 'auto' takes 'native' where fused_depthwise.usable() says so (CPU,
  one device, float32, k <= 7, the kernel built), else 'shift' on CPU, where XLA's grouped convolution is 5-15x
  slower (forward and kernel gradient), and 'conv' elsewhere (cuDNN's depthwise kernels are fast). All
  give the same result up to float rounding.
  """
  kernel_size: int
  impl: str = 'auto'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  silu_around: bool = False

  @nn.compact
  def __call__(self, x):
    k, channels = self.kernel_size, x.shape[-1]
    kernel = self.param('kernel', init_kernel, (k, k, 1, channels), self.param_dtype)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    impl = self.impl
    if impl == 'auto':
      impl = 'native' if self.silu_around and fused_depthwise.usable(x, k) else xla_depthwise_impl()
    if impl == 'native':
      if not self.silu_around or x.dtype != jnp.float32 or k > fused_depthwise.MAX_KERNEL_SIZE:
        raise ValueError("depthwise impl 'native' computes SiLU(conv(SiLU(x))) in float32 with kernels up to "
                         f"{fused_depthwise.MAX_KERNEL_SIZE} only (silu_around=True); got silu_around="
                         f"{self.silu_around}, dtype {x.dtype}, kernel size {k}: use 'auto'")
      return fused_depthwise.silu_depthwise_silu(x, kernel[:, :, 0, :])
    if self.silu_around:
      x = nn.silu(x)
    if impl == 'conv':
      y = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                       feature_group_count=channels)
    elif impl == 'shift':
      y = depthwise_shift(x, kernel[:, :, 0, :])
    else:
      raise ValueError(f"depthwise impl must be 'auto', 'native', 'conv' or 'shift', got {impl!r}")
    return nn.silu(y) if self.silu_around else y


def _shift_correlate(x, kernel):
  """sum_ij x[h+i-p, w+j-p] * kernel[i, j]: a depthwise cross-correlation as k*k shifted multiply-adds."""
  k = kernel.shape[0]
  p, (h, w) = k // 2, x.shape[1:3]
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  out = xp[:, :h, :w, :] * kernel[0, 0]
  for i in range(k):
    for j in range(k):
      if i or j:
        out = out + xp[:, i:i + h, j:j + w, :] * kernel[i, j]
  return out


@jax.custom_vjp
def depthwise_shift(x, kernel):
  """Depthwise kxk 'same' cross-correlation of NHWC `x` with `kernel` (k, k, C), as shifted multiply-adds.

  Its gradient is written out (custom_vjp) so that the backward pass keeps only x and the kernel: plain
  autodiff would save each of the k*k shifted slices, k*k times the activation memory of the block.
  """
  return _shift_correlate(x, kernel)


def _depthwise_shift_fwd(x, kernel):
  return _shift_correlate(x, kernel), (x, kernel)


def _depthwise_shift_bwd(res, g):
  x, kernel = res
  k = kernel.shape[0]
  p, (h, w) = k // 2, x.shape[1:3]
  dx = _shift_correlate(g, kernel[::-1, ::-1])  # the transpose of a correlation: the flipped kernel
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  dk = jnp.stack([jnp.stack([jnp.sum(xp[:, i:i + h, j:j + w, :] * g, axis=(0, 1, 2), dtype=jnp.float32)
                             for j in range(k)]) for i in range(k)])
  return dx, dk.astype(kernel.dtype)


depthwise_shift.defvjp(_depthwise_shift_fwd, _depthwise_shift_bwd)


def drop_path(module: nn.Module, x, rate, deterministic: bool):
  """Stochastic depth (timm DropPath): zero whole samples with probability `rate`, scale the rest by 1/(1-rate).

  `rate` may be a traced scalar (blocks of a stage are scanned, each with its own rate).
  """
  if deterministic:
    return x
  keep = 1.0 - rate
  mask = jax.random.bernoulli(module.make_rng('dropout'), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))


def channel_dropout(rate: float, name: str | None = None) -> nn.Dropout:
  """nn.Dropout2d of the official model: drops whole channels of an NHWC map (mask shared over H and W)."""
  return nn.Dropout(rate, broadcast_dims=(1, 2), rng_collection='dropout', name=name)


@functools.lru_cache(maxsize=None)
def _pool_counts(size: int, ratio: int) -> np.ndarray:
  """Number of real (unpadded) positions in each pooling window along one axis."""
  starts = np.arange(0, size, ratio)
  return np.minimum(ratio, size - starts).astype(np.float32)


def avg_pool(x, ratio: int):
  """AvgPool2d(ratio, stride=ratio) of an NHWC map, extended to sizes that `ratio` does not divide.

  A partial window at the bottom/right edge averages only the positions it covers (as PyTorch's
  ceil_mode=True, count_include_pad=False), so every pooled token is a true mean of real pixels.
  When `ratio` divides H and W this is exactly the plain average pooling.
  """
  if ratio == 1:
    return x
  b, h, w, c = x.shape
  hp, wp = -(-h // ratio) * ratio, -(-w // ratio) * ratio
  x = jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
  summed = x.reshape(b, hp // ratio, ratio, wp // ratio, ratio, c).sum(axis=(2, 4))
  counts = np.outer(_pool_counts(h, ratio), _pool_counts(w, ratio))[None, :, :, None]
  return summed / counts.astype(summed.dtype)
