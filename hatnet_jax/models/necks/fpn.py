"""mmdet/mmseg's FPN neck (Lin et al. 2017): 1x1 lateral convs to `channels` on the inputs from `start_level`
on, a top-down sum with nearest upsampling to the finer map's size, 3x3 output convs (convs with bias, no norm,
no activation), then `num_outs - used inputs` extra levels at stride 2 each:

    add_extra_convs=''           max-pool kernel 1 stride 2 of the last output (F.max_pool2d(x, 1, stride=2):
                                 every other pixel; Faster / Mask R-CNN)
    add_extra_convs='on_input'   3x3 stride-2 conv of the last backbone input for the first extra level, of the
                                 previous output for the next ones (RetinaNet); 'on_lateral' / 'on_output' start
                                 from the last lateral / output instead
    relu_before_extra_convs      ReLU before the second and later extra convs (never before the first, as mmdet)

Semantic FPN uses the defaults (start_level 0, one output per input). Parameter names follow mmdet's ModuleList
order: lateral_convs_i and fpn_convs_i count from 0 at start_level, extra convs continue fpn_convs' numbering.
Convs are initialised xavier-uniform with zero bias, as mmdet and mmseg."""
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from hatnet_jax.models import resize

_xavier = nn.initializers.xavier_uniform()
EXTRA_CONVS = ('', 'on_input', 'on_lateral', 'on_output')


class FPN(nn.Module):
  """FPN neck on a list of NHWC maps (finest first): a list of `num_outs` `channels`-wide maps."""
  channels: int = 256
  start_level: int = 0
  num_outs: int | None = None  # None: one output per used input (no extra levels)
  add_extra_convs: str = ''  # see EXTRA_CONVS and the module docstring
  relu_before_extra_convs: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _conv(self, k: int, name: str, stride: int = 1):
    return nn.Conv(self.channels, (k, k), strides=stride, padding=((k // 2, k // 2),) * 2, dtype=self.dtype,
                   param_dtype=self.param_dtype, kernel_init=_xavier, name=name)

  def _check(self, num_inputs: int) -> int:
    """The number of outputs; ValueError for settings that do not fit `num_inputs` maps."""
    if self.add_extra_convs not in EXTRA_CONVS:
      raise ValueError(f'FPN add_extra_convs must be one of {EXTRA_CONVS}; got {self.add_extra_convs!r}')
    used = num_inputs - self.start_level
    if not 0 <= self.start_level < num_inputs:
      raise ValueError(f'FPN start_level={self.start_level} needs 0 <= start_level < {num_inputs} '
                       f'(the number of input maps)')
    num_outs = used if self.num_outs is None else self.num_outs
    if num_outs < used:
      raise ValueError(f'FPN num_outs={num_outs} is fewer than the {used} maps it takes from start_level='
                       f'{self.start_level}; raise num_outs or start_level')
    return num_outs

  @nn.compact
  def __call__(self, feats):
    num_outs = self._check(len(feats))
    inputs = feats[self.start_level:]
    laterals = [self._conv(1, f'lateral_convs_{i}')(x) for i, x in enumerate(inputs)]
    for i in range(len(laterals) - 1, 0, -1):  # coarse to fine; each level already holds the ones above
      laterals[i - 1] = laterals[i - 1] + resize.nearest(laterals[i], laterals[i - 1].shape[1:3])
    outs = [self._conv(3, f'fpn_convs_{i}')(x) for i, x in enumerate(laterals)]
    n = len(outs)
    if not self.add_extra_convs:
      while len(outs) < num_outs:  # kernel 1, stride 2: ceil(H / 2) x ceil(W / 2), every other pixel
        outs.append(outs[-1][:, ::2, ::2, :])
      return outs
    if num_outs > n:
      source = {'on_input': inputs[-1], 'on_lateral': laterals[-1], 'on_output': outs[-1]}[self.add_extra_convs]
      outs.append(self._conv(3, f'fpn_convs_{n}', stride=2)(source))
    for i in range(n + 1, num_outs):
      x = nn.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
      outs.append(self._conv(3, f'fpn_convs_{i}', stride=2)(x))
    return outs
