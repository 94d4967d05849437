"""mmdet's RetinaHead (Lin et al. 2017, focal loss): on every FPN level, with the SAME parameters,

    cls branch  stacked_convs x [3x3 conv (bias) + ReLU] to feat_channels, then retina_cls 3x3 -> A * K
    reg branch  stacked_convs x [3x3 conv (bias) + ReLU] to feat_channels, then retina_reg 3x3 -> A * 4

(A anchors per position, K classes, sigmoid classification: no background channel). Outputs are NHWC with
channel a * K + k / a * 4 + c, the order of mmdet's NCHW maps after permute(0, 2, 3, 1). Initialisation as
mmdet: every conv normal(std 0.01) with zero bias, except retina_cls's bias -log((1 - 0.01) / 0.01) (every
anchor starts at foreground probability 0.01). Parameters: cls_convs_i, reg_convs_i, retina_cls, retina_reg.
"""
import math
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

PRIOR_PROB = 0.01
_normal = nn.initializers.normal(stddev=0.01)


class RetinaHead(nn.Module):
  """Per-level (class logits [B, H, W, A*K], box deltas [B, H, W, A*4]), both float32 whatever `dtype`."""
  num_classes: int
  num_anchors: int = 9
  feat_channels: int = 256
  stacked_convs: int = 4
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _conv(self, features: int, name: str, bias_init=nn.initializers.zeros):
    return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, param_dtype=self.param_dtype,
                   kernel_init=_normal, bias_init=bias_init, name=name)

  @nn.compact
  def __call__(self, feats):
    if self.num_classes < 1 or self.num_anchors < 1:
      raise ValueError(f'RetinaHead needs num_classes >= 1 and num_anchors >= 1; got {self.num_classes}, '
                       f'{self.num_anchors}')
    # Built once, applied to every level: the levels share these parameters.
    cls_convs = [self._conv(self.feat_channels, f'cls_convs_{i}') for i in range(self.stacked_convs)]
    reg_convs = [self._conv(self.feat_channels, f'reg_convs_{i}') for i in range(self.stacked_convs)]
    prior = nn.initializers.constant(-math.log((1 - PRIOR_PROB) / PRIOR_PROB))
    retina_cls = self._conv(self.num_anchors * self.num_classes, 'retina_cls', bias_init=prior)
    retina_reg = self._conv(self.num_anchors * 4, 'retina_reg')
    logits, deltas = [], []
    for x in feats:
      c = r = x
      for conv in cls_convs:
        c = nn.relu(conv(c))
      for conv in reg_convs:
        r = nn.relu(conv(r))
      logits.append(retina_cls(c).astype(jnp.float32))
      deltas.append(retina_reg(r).astype(jnp.float32))
    return logits, deltas
