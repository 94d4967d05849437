"""mmseg's FPN neck (Lin et al. 2017): 1x1 lateral convs to `channels`, a top-down sum with nearest
upsampling to the finer map's size, 3x3 output convs (convs with bias, no norm, no activation), one output per
input. Convs are initialised xavier-uniform with zero bias, as mmseg."""
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from hatnet_jax.models import resize

_xavier = nn.initializers.xavier_uniform()


class FPN(nn.Module):
  """mmseg's FPN neck (num_outs = number of inputs, no extra levels): a list of `channels`-wide maps."""
  channels: int = 256
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _conv(self, k: int, name: str):
    return nn.Conv(self.channels, (k, k), padding=((k // 2, k // 2),) * 2, dtype=self.dtype,
                   param_dtype=self.param_dtype, kernel_init=_xavier, name=name)

  @nn.compact
  def __call__(self, feats):
    laterals = [self._conv(1, f'lateral_convs_{i}')(x) for i, x in enumerate(feats)]
    for i in range(len(laterals) - 1, 0, -1):  # coarse to fine; each level already holds the ones above
      laterals[i - 1] = laterals[i - 1] + resize.nearest(laterals[i], laterals[i - 1].shape[1:3])
    return [self._conv(3, f'fpn_convs_{i}')(x) for i, x in enumerate(laterals)]
