"""Mask R-CNN (He et al. 2017) on a HAT-Net backbone, as mmdet 3.3.0 builds it for the PVT recipe (PVT's
mask_rcnn_pvt_*_fpn_1x_coco.py on mmdet's mask-rcnn_r50_fpn.py): the network only; proposals, RoIAlign and
sampling live in `hatnet_jax.structures` and the task runs them between these submodules:

    backbone   HATNet.features: 4 maps at strides 4, 8, 16, 32 (param subtree = a classifier's minus `head`)
    neck       mmdet FPN(start_level=0, num_outs=5, add_extra_convs=False): 1x1 laterals, top-down sum,
               3x3 output convs (P2-P5); P6 = max-pool kernel 1 stride 2 of P5 (every other pixel);
               5 levels at strides 4, 8, 16, 32, 64
    rpn_head   mmdet RPNHead shared by the levels: 3x3 conv + ReLU, 1x1 objectness (A sigmoid logits) and
               1x1 deltas (A * 4), A = 3 anchors (scale 8, ratios 0.5, 1, 2)
    roi_head   bbox_head: mmdet Shared2FCBBoxHead on 7x7 RoIs pooled from P2-P5: 2 fcs of fc_channels, fc_cls
               (num_classes + 1, background last), fc_reg (num_classes * 4)
               mask_head: mmdet FCNMaskHead on 14x14 RoIs: 4 x [3x3 conv + ReLU], 2x deconv + ReLU,
               1x1 conv to num_classes

Methods, all called inside one `model.apply(..., method=fn)` by the task:
    features(images, train)  -> 5 NHWC maps [B, ceil(H / s), ceil(W / s), neck_channels], s = 4 ... 64
    rpn(features)            -> (objectness [B, H_l, W_l, A], deltas [B, H_l, W_l, A*4]) lists of 5, float32
    box_head(pooled, train)  -> (cls_logits [R, C+1], deltas [R, C*4]), float32; pooled [R, 7, 7, neck_channels]
    mask_head(pooled)        -> [P, 28, 28, C] float32 logits; pooled [P, 14, 14, neck_channels]
`__call__(images, train)` (init, `models.create` users) runs every submodule once: features and rpn on the
images, box_head and mask_head on ONE all-zero pooled RoI each (so that init creates every parameter; those
two outputs carry no information): ((objectness, deltas), (cls_logits [1, C+1], deltas [1, C*4]),
mask_logits [1, 28, 28, C]).

Parameter tree (mmdet's state-dict nesting): backbone/..., neck/{lateral_convs_0..3, fpn_convs_0..3},
rpn_head/{rpn_conv, rpn_cls, rpn_reg}, roi_head/bbox_head/{shared_fcs_0, shared_fcs_1, fc_cls, fc_reg},
roi_head/mask_head/{convs_0..3, upsample, conv_logits}. No BatchNorm: the variables are `params` only.
Initialisation as mmdet (see the heads' modules).
"""
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from hatnet_jax.models.backbone.hatnet import HATNet
from hatnet_jax.models.backbone.variants import Variant
from hatnet_jax.models.heads.roi_heads import RoIHead
from hatnet_jax.models.heads.rpn_head import RPNHead
from hatnet_jax.models.necks.fpn import FPN

STRIDES = (4, 8, 16, 32, 64)  # of the 5 FPN levels (the RPN's anchor strides)
ROI_STRIDES = STRIDES[:4]  # the levels RoIAlign pools from (mmdet's featmap_strides)
BOX_ROI_SIZE, MASK_ROI_SIZE = 7, 14  # pooled sides; the mask head doubles its input's


class MaskRCNN(nn.Module):
  """HAT-Net + FPN + RPN + RoI box and mask heads; NHWC images. See the module docstring for the methods.

  Fields mirror HATNet's (dtype for convs and fcs, param_dtype for parameters; norms, logits and deltas in
  float32).
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
  rpn_channels: int = 256  # mmdet RPNHead's feat_channels
  num_anchors: int = 3  # 1 scale x 3 aspect ratios
  fc_channels: int = 1024  # Shared2FCBBoxHead's fc_out_channels
  mask_channels: int = 256  # FCNMaskHead's conv_out_channels

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.backbone = HATNet(self.variant, drop_path_rate=self.drop_path_rate, drop_rate=self.drop_rate,
                           remat=self.remat, unroll=self.unroll, attention_impl=self.attention_impl,
                           depthwise_impl=self.depthwise_impl, norm_impl=self.norm_impl, **kw)
    self.neck = FPN(self.neck_channels, start_level=0, num_outs=len(STRIDES), add_extra_convs='', **kw)
    self.rpn_head = RPNHead(self.num_anchors, self.rpn_channels, **kw)
    # The two RoI heads sit under roi_head (as mmdet's): the methods box_head / mask_head take their names.
    self.roi_head = RoIHead(self.num_classes, self.fc_channels, self.mask_channels, **kw)

  def features(self, x, train: bool = False):
    """The 5 FPN maps (strides 4 ... 64; neck_channels wide)."""
    return self.neck(self.backbone.features(x, train))

  def rpn(self, feats):
    """Per level (objectness logits [B, H, W, A], deltas [B, H, W, A*4]), float32."""
    return self.rpn_head(feats)

  def box_head(self, pooled, train: bool = False):
    """7x7 pooled RoIs [R, 7, 7, neck_channels] -> (cls_logits [R, C+1], deltas [R, C*4]), float32."""
    self._check_pooled(pooled, BOX_ROI_SIZE, 'box_head')
    return self.roi_head.bbox_head(pooled, train)

  def mask_head(self, pooled):
    """14x14 pooled RoIs [P, 14, 14, neck_channels] -> mask logits [P, 28, 28, C], float32."""
    self._check_pooled(pooled, MASK_ROI_SIZE, 'mask_head')
    return self.roi_head.mask_head(pooled)

  def _check_pooled(self, pooled, size: int, what: str):
    want = (size, size, self.neck_channels)
    if pooled.ndim != 4 or tuple(pooled.shape[1:]) != want:
      raise ValueError(f'MaskRCNN.{what} takes pooled RoI features [R, {size}, {size}, {self.neck_channels}] '
                       f'(RoIAlign output_size={size} on the neck maps); got shape {tuple(pooled.shape)}')

  def __call__(self, x, train: bool = False):
    feats = self.features(x, train)
    rpn = self.rpn(feats)
    zeros = lambda s: jnp.zeros((1, s, s, self.neck_channels), self.dtype)
    return rpn, self.box_head(zeros(BOX_ROI_SIZE), train), self.mask_head(zeros(MASK_ROI_SIZE))
