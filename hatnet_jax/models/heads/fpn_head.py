"""mmseg's FPNHead, the decode head of Semantic FPN (Kirillov et al. 2019): per level
max(1, log2(stride / 4)) x [3x3 conv (no bias) + BN + ReLU, then 2x bilinear upsampling unless stride 4];
levels summed after a bilinear resize to level 0's size; channel dropout (Dropout2d); a 1x1 conv_seg to the
classes. Scale-head convs kaiming-normal (fan_out, ReLU gain), BN scale 1 and bias 0, conv_seg normal(std
0.01) with zero bias, as mmseg."""
import math
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from hatnet_jax.models import resize

_kaiming = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')  # mmcv kaiming_init(mode='fan_out')
_seg_init = nn.initializers.normal(stddev=0.01)


def head_lengths(strides: tuple[int, ...]) -> list[int]:
  """ConvModules per FPNHead level: max(1, log2(stride / strides[0]))."""
  return [max(1, int(math.log2(s) - math.log2(strides[0]))) for s in strides]


class ConvBNReLU(nn.Module):
  """mmcv ConvModule(3x3, padding 1, norm BN, act ReLU): the conv has no bias; BN and ReLU run in float32."""
  channels: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
                param_dtype=self.param_dtype, kernel_init=_kaiming, name='conv')(x)
    # Two-pass variance: E[x^2] - E[x]^2 loses digits on un-normalised conv outputs.
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=jnp.float32,
                     param_dtype=self.param_dtype, use_fast_variance=False, name='bn')(x)
    return nn.relu(x)


class FPNHead(nn.Module):
  """mmseg's FPNHead (Semantic FPN decode head) on the FPN maps; returns logits at stride strides[0]."""
  num_classes: int
  channels: int = 128
  strides: tuple[int, ...] = (4, 8, 16, 32)
  drop_rate: float = 0.1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feats, train: bool):
    out = None
    for i, (x, n) in enumerate(zip(feats, head_lengths(self.strides))):
      for k in range(n):
        x = ConvBNReLU(self.channels, self.dtype, self.param_dtype, name=f'scale_heads_{i}_{k}')(x, train)
        if self.strides[i] != self.strides[0]:  # mmseg's Upsample(scale_factor=2): exactly twice the size
          x = resize.bilinear(x, (2 * x.shape[1], 2 * x.shape[2]))
      # Coarse levels of odd-sized inputs come out one pixel larger or smaller: resized to level 0's size.
      out = x if out is None else out + resize.bilinear(x, out.shape[1:3])
    out = nn.Dropout(self.drop_rate, broadcast_dims=(1, 2), rng_collection='dropout')(out, deterministic=not train)
    return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=_seg_init,
                   name='conv_seg')(out).astype(jnp.float32)
