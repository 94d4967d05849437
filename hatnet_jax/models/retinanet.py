"""RetinaNet (Lin et al. 2017) on a HAT-Net backbone, as mmdet builds it for the PVT recipe
(PVT's retinanet_pvt_*_fpn_1x_coco.py on mmdet's retinanet_r50_fpn.py):

    backbone   HATNet.features: 4 maps at strides 4, 8, 16, 32 (param subtree = a classifier's minus `head`)
    neck       mmdet FPN(start_level=1, num_outs=5, add_extra_convs='on_input', relu_before_extra_convs=False):
               1x1 lateral convs on the stride 8, 16, 32 maps, top-down sum with nearest upsampling, 3x3
               output convs (P3-P5); P6 = 3x3 stride-2 conv of the stride-32 backbone map, P7 = 3x3
               stride-2 conv of P6 (no ReLU in between: mmdet's RetinaNet config leaves
               relu_before_extra_convs at False, unlike Detectron / torchvision); all convs with bias, no
               norm, no activation; 5 levels at strides 8, 16, 32, 64, 128
    bbox_head  mmdet RetinaHead, shared by the 5 levels: 4 x [3x3 conv + ReLU] per branch, retina_cls 3x3 to
               num_anchors * num_classes sigmoid logits, retina_reg 3x3 to num_anchors * 4 box deltas

Output of `apply(variables, images, train=False)`: (cls_logits, box_deltas), two lists of 5 float32 arrays
[B, H_l, W_l, A*K] and [B, H_l, W_l, A*4], channel a*K + k / a*4 + c as mmdet's maps after
permute(0, 2, 3, 1). Any input size: H_l = ceil(H / stride_l) (every conv pads 1, rounding up).

Parameter tree: backbone/..., neck/{lateral_convs_0..2, fpn_convs_0..4 (3, 4: the P6, P7 convs)},
bbox_head/{cls_convs_0..3, reg_convs_0..3, retina_cls, retina_reg}. No BatchNorm anywhere (HAT-Net uses
GroupNorm), so the variables are `params` only.

Initialisation as mmdet: FPN convs xavier-uniform with zero bias; head convs normal(std 0.01) with zero bias,
retina_cls bias -log(99) (prior 0.01). The backbone is initialised as the classifier (normally overwritten
from ImageNet weights). The neck lives in `models/necks/fpn.py`, the head in `models/heads/retina_head.py`.
"""
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from hatnet_jax.models.backbone.hatnet import HATNet
from hatnet_jax.models.backbone.variants import Variant
from hatnet_jax.models.heads.retina_head import RetinaHead
from hatnet_jax.models.necks.fpn import FPN

STRIDES = (8, 16, 32, 64, 128)  # of the 5 FPN levels the head sees (mmdet's anchor_generator strides)


class RetinaNet(nn.Module):
  """HAT-Net + FPN + RetinaHead on NHWC images: (B, H, W, 3) -> (cls_logits, box_deltas), 5 levels each.

  Fields mirror HATNet's (dtype for convs, param_dtype for parameters; norms, logits and deltas in float32).
  """
  variant: Variant
  num_classes: int = 80
  drop_path_rate: float = 0.0
  drop_rate: float = 0.0
  remat: bool = False
  unroll: bool | int = False  # as HATNet's
  attention_impl: str | None = None
  depthwise_impl: str = 'auto'
  norm_impl: str = 'auto'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  neck_channels: int = 256
  head_channels: int = 256
  num_anchors: int = 9  # 3 scales x 3 aspect ratios (mmdet's octave_base_scale=4, scales_per_octave=3)

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.backbone = HATNet(self.variant, drop_path_rate=self.drop_path_rate, drop_rate=self.drop_rate,
                           remat=self.remat, unroll=self.unroll, attention_impl=self.attention_impl,
                           depthwise_impl=self.depthwise_impl, norm_impl=self.norm_impl, **kw)
    self.neck = FPN(self.neck_channels, start_level=1, num_outs=len(STRIDES), add_extra_convs='on_input',
                    relu_before_extra_convs=False, **kw)
    self.bbox_head = RetinaHead(self.num_classes, self.num_anchors, self.head_channels, **kw)

  def features(self, x, train: bool = False):
    """The 5 FPN maps (strides 8 ... 128; neck_channels wide)."""
    return self.neck(self.backbone.features(x, train))

  def __call__(self, x, train: bool = False):
    return self.bbox_head(self.features(x, train))
