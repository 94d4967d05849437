"""mmdet's RPNHead (Ren et al. 2015) with num_convs=1, on every FPN level with the SAME parameters:

    rpn_conv  3x3 conv (bias) to feat_channels + ReLU
    rpn_cls   1x1 conv -> A objectness logits (mmdet 3.x: sigmoid, one channel per anchor)
    rpn_reg   1x1 conv -> A * 4 box deltas

Outputs are NHWC with channel a / a * 4 + c, the order of mmdet's NCHW maps after permute(0, 2, 3, 1), in
float32 whatever `dtype`. Initialisation as mmdet (init_cfg Normal on Conv2d): every conv normal(std 0.01),
zero bias.
"""
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

_normal = nn.initializers.normal(stddev=0.01)


class RPNHead(nn.Module):
  """Per-level (objectness logits [B, H, W, A], box deltas [B, H, W, A*4]), both float32."""
  num_anchors: int = 3
  feat_channels: int = 256
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _conv(self, features: int, k: int, name: str):
    return nn.Conv(features, (k, k), padding=((k // 2, k // 2),) * 2, dtype=self.dtype,
                   param_dtype=self.param_dtype, kernel_init=_normal, name=name)

  @nn.compact
  def __call__(self, feats):
    if self.num_anchors < 1:
      raise ValueError(f'RPNHead needs num_anchors >= 1; got {self.num_anchors}')
    # Built once, applied to every level: the levels share these parameters.
    rpn_conv = self._conv(self.feat_channels, 3, 'rpn_conv')
    rpn_cls = self._conv(self.num_anchors, 1, 'rpn_cls')
    rpn_reg = self._conv(self.num_anchors * 4, 1, 'rpn_reg')
    logits, deltas = [], []
    for x in feats:
      x = nn.relu(rpn_conv(x))
      logits.append(rpn_cls(x).astype(jnp.float32))
      deltas.append(rpn_reg(x).astype(jnp.float32))
    return logits, deltas
