"""Semantic FPN (Kirillov et al. 2019) on a HAT-Net backbone, as mmseg 0.13 builds it for the PVT recipe.

    backbone  HATNet.features: 4 maps at strides 4, 8, 16, 32 (param subtree = a classifier's minus `head`)
    neck      mmseg FPN: 1x1 lateral convs to 256, top-down sum with nearest upsampling to the finer map's
              size, 3x3 output convs (all convs with bias, no norm, no activation)
    head      mmseg FPNHead: per level max(1, log2(stride / 4)) x [3x3 conv (no bias) + BN + ReLU, then 2x
              bilinear upsampling unless stride 4]; levels summed after a bilinear resize to level 0's
              size; channel dropout (Dropout2d) 0.1; 1x1 conv_seg to the classes
    output    logits bilinearly resized to the input size (align_corners=False, as EncoderDecoder does)

Parameter tree: backbone/..., neck/{lateral_convs_i, fpn_convs_i}, decode_head/{scale_heads_i_k/{conv, bn},
conv_seg}; `batch_stats` holds the BatchNorm running statistics of decode_head/scale_heads_*_*/bn.

BatchNorm is synchronised for free: the trainer jits over a Mesh with global batch arrays, so the batch mean
and variance are taken over the global batch (mmseg's SyncBN), whatever the sharding. Running statistics
follow PyTorch's momentum 0.1 (flax momentum 0.9), except that flax updates the running variance with the
biased batch variance where PyTorch uses the unbiased one (a factor n/(n-1), n = pixels x batch).

Initialisation as mmseg: FPN convs xavier-uniform with zero bias; scale-head convs kaiming-normal
(fan_out, ReLU gain), BN scale 1 and bias 0; conv_seg normal(std 0.01) with zero bias. The backbone is
initialised as the classifier (it is normally overwritten from ImageNet weights).
The neck lives in `models/necks/fpn.py`, the head in `models/heads/fpn_head.py`.
"""
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from hatnet_jax.models import resize
from hatnet_jax.models.backbone.hatnet import HATNet
from hatnet_jax.models.backbone.variants import Variant
from hatnet_jax.models.heads.fpn_head import FPNHead
from hatnet_jax.models.necks.fpn import FPN

class SemanticFPN(nn.Module):
  """HAT-Net + Semantic FPN on NHWC images: (B, H, W, 3) -> float32 logits (B, H, W, num_classes), any H, W.

  Fields mirror HATNet's (dtype for convs, param_dtype for parameters; norms and logits in float32).
  head_drop_rate is the channel dropout before conv_seg (mmseg's dropout_ratio). Variables: params and
  batch_stats; pass mutable=['batch_stats'] when train=True.
  """
  variant: Variant
  num_classes: int = 150
  drop_path_rate: float = 0.0
  drop_rate: float = 0.0
  head_drop_rate: float = 0.1
  remat: bool = False
  unroll: bool | int = False  # as HATNet's
  attention_impl: str | None = None
  depthwise_impl: str = 'auto'
  norm_impl: str = 'auto'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  neck_channels: int = 256
  head_channels: int = 128

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.backbone = HATNet(self.variant, drop_path_rate=self.drop_path_rate, drop_rate=self.drop_rate,
                           remat=self.remat, unroll=self.unroll, attention_impl=self.attention_impl,
                           depthwise_impl=self.depthwise_impl, norm_impl=self.norm_impl, **kw)
    self.neck = FPN(self.neck_channels, **kw)
    self.decode_head = FPNHead(self.num_classes, self.head_channels, drop_rate=self.head_drop_rate, **kw)

  def features(self, x, train: bool = False):
    """The FPN maps (strides 4, 8, 16, 32; neck_channels wide)."""
    return self.neck(self.backbone.features(x, train))

  def __call__(self, x, train: bool = False):
    logits = self.decode_head(self.features(x, train), train)
    return resize.bilinear(logits, x.shape[1:3])


def backbone_params_from_classifier(params) -> dict:
  """A HAT-Net classifier's params (the dict under 'params') -> SemanticFPN's params['backbone'].

  The backbone's tree is the classifier's without `head`, so this drops `head` and checks the rest.
  """
  params = dict(params)
  if 'stem_conv1' not in params or 'backbone' in params:
    raise ValueError(f'expected the params of a HAT-Net classifier (stem_conv1, stage1, ...); got keys '
                     f'{sorted(params)}')
  params.pop('head', None)
  return params
