"""Mask R-CNN's RoI heads, as mmdet 3.3.0's StandardRoIHead builds them from mask-rcnn_r50_fpn.py; both act on
pooled RoI features (RoIAlign lives in `hatnet_jax.structures`, applied by the task). `RoIHead` holds the two
as bbox_head and mask_head (mmdet's roi_head.bbox_head / roi_head.mask_head):

    BBoxHead  (mmdet Shared2FCBBoxHead) [R, 7, 7, C] -> flatten -> shared_fcs_0 (fc_channels) + ReLU ->
              shared_fcs_1 + ReLU -> fc_cls: num_classes + 1 softmax logits (background last, as mmdet),
              fc_reg: num_classes * 4 class-specific box deltas (column k * 4 + c)
    MaskHead  (mmdet FCNMaskHead) [P, 14, 14, C] -> 4 x [3x3 conv + ReLU] -> 2x2 stride-2 transposed conv
              (`upsample`) + ReLU -> 1x1 conv_logits: [P, 28, 28, num_classes] per-class mask logits

The flatten is NHWC (h, w, c); mmdet flattens NCHW (c, h, w), so its shared_fcs.0 weight is permuted by the
converter (tools/convert_mmdet.py), not the activations here. `upsample` is flax's ConvTranspose (kernel
(kh, kw, in, out), not flipped): torch's ConvTranspose2d weight converts with a spatial flip.

Initialisation as mmdet: shared fcs xavier-uniform, fc_cls normal(0.01), fc_reg normal(0.001); mask convs
(ConvModule) and upsample / conv_logits (FCNMaskHead.init_weights) kaiming-normal, fan_out, ReLU gain
(untruncated); every bias zero. Logits and deltas are float32 whatever `dtype`.
"""
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

_kaiming_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class BBoxHead(nn.Module):
  """Pooled RoI features [R, S, S, C] -> (class logits [R, num_classes + 1], deltas [R, num_classes * 4])."""
  num_classes: int
  fc_channels: int = 1024
  num_shared_fcs: int = 2
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no dropout or norm: the same in both modes (the argument keeps the heads' call uniform)
    if self.num_classes < 1:
      raise ValueError(f'BBoxHead needs num_classes >= 1; got {self.num_classes}')
    dense = lambda n, init, name: nn.Dense(n, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=init,
                                           name=name)
    x = x.reshape(x.shape[0], -1)
    for i in range(self.num_shared_fcs):
      x = nn.relu(dense(self.fc_channels, nn.initializers.xavier_uniform(), f'shared_fcs_{i}')(x))
    cls = dense(self.num_classes + 1, nn.initializers.normal(0.01), 'fc_cls')(x)
    reg = dense(self.num_classes * 4, nn.initializers.normal(0.001), 'fc_reg')(x)
    return cls.astype(jnp.float32), reg.astype(jnp.float32)


class MaskHead(nn.Module):
  """Pooled RoI features [P, S, S, C] -> float32 mask logits [P, 2S, 2S, num_classes]."""
  num_classes: int
  channels: int = 256
  num_convs: int = 4
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.num_classes < 1:
      raise ValueError(f'MaskHead needs num_classes >= 1; got {self.num_classes}')
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=_kaiming_fan_out)
    for i in range(self.num_convs):
      x = nn.relu(nn.Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), name=f'convs_{i}', **kw)(x))
    x = nn.relu(nn.ConvTranspose(self.channels, (2, 2), strides=(2, 2), padding='VALID', name='upsample', **kw)(x))
    return nn.Conv(self.num_classes, (1, 1), name='conv_logits', **kw)(x).astype(jnp.float32)


class RoIHead(nn.Module):
  """Holds bbox_head (BBoxHead) and mask_head (MaskHead); the owner calls them as `roi_head.bbox_head(x)`."""
  num_classes: int
  fc_channels: int = 1024
  mask_channels: int = 256
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.bbox_head = BBoxHead(self.num_classes, self.fc_channels, **kw)
    self.mask_head = MaskHead(self.num_classes, self.mask_channels, **kw)
