"""An independent PyTorch Semantic FPN (mmseg 0.13's EncoderDecoder with FPN neck + FPNHead), written from
mmseg's description, on tests/references/torch_hatnet.py's backbone, with mmseg's state-dict key names:

  backbone.*                                   official HAT-Net layout (no classifier)
  neck.lateral_convs.i.conv.*, neck.fpn_convs.i.conv.*
  decode_head.scale_heads.i.j.{conv,bn}.*      ConvModules at even j, parameter-free Upsample at odd j
  decode_head.conv_seg.*
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from tests.references import torch_hatnet


class ConvModule(nn.Module):
  """mmcv's ConvModule as the configs use it: conv (bias only without a norm), optional BN, optional ReLU."""

  def __init__(self, cin, cout, k, norm=False, act=False):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=not norm)
    if norm:
      self.bn = nn.BatchNorm2d(cout)
    self.act = act

  def forward(self, x):
    x = self.conv(x)
    if hasattr(self, 'bn'):
      x = self.bn(x)
    return F.relu(x) if self.act else x


class Upsample2x(nn.Module):
  """mmseg.ops.Upsample(scale_factor=2, bilinear): a resize to exactly (2h, 2w)."""

  def forward(self, x):
    return F.interpolate(x, size=(2 * x.shape[2], 2 * x.shape[3]), mode='bilinear', align_corners=False)


class FPN(nn.Module):

  def __init__(self, in_channels, out_channels=256):
    super().__init__()
    self.lateral_convs = nn.ModuleList([ConvModule(c, out_channels, 1) for c in in_channels])
    self.fpn_convs = nn.ModuleList([ConvModule(out_channels, out_channels, 3) for _ in in_channels])

  def forward(self, feats):
    lat = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
    for i in range(len(lat) - 1, 0, -1):
      lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:], mode='nearest')
    return [conv(x) for conv, x in zip(self.fpn_convs, lat)]


class FPNHead(nn.Module):

  def __init__(self, num_classes, in_channels=256, channels=128, strides=(4, 8, 16, 32), dropout=0.1):
    super().__init__()
    heads = []
    for s in strides:
      layers = []
      for k in range(max(1, int(math.log2(s) - math.log2(strides[0])))):
        layers.append(ConvModule(in_channels if k == 0 else channels, channels, 3, norm=True, act=True))
        if s != strides[0]:
          layers.append(Upsample2x())
      heads.append(nn.Sequential(*layers))
    self.scale_heads = nn.ModuleList(heads)
    self.dropout = nn.Dropout2d(dropout)
    self.conv_seg = nn.Conv2d(channels, num_classes, 1)

  def forward(self, feats):
    out = self.scale_heads[0](feats[0])
    for head, x in zip(self.scale_heads[1:], feats[1:]):
      out = out + F.interpolate(head(x), size=out.shape[2:], mode='bilinear', align_corners=False)
    return self.conv_seg(self.dropout(out))


class SemanticFPN(nn.Module):
  """Takes NCHW images; returns logits (B, num_classes, H, W) at the input size."""

  def __init__(self, variant, num_classes=150):
    super().__init__()
    self.backbone = torch_hatnet.HATNet(variant)
    del self.backbone.classifier  # mmseg's backbone has none
    self.neck = FPN(variant.dims)
    self.decode_head = FPNHead(num_classes)

  def forward(self, x):
    out = self.decode_head(self.neck(self.backbone.features(x)))
    return F.interpolate(out, size=x.shape[2:], mode='bilinear', align_corners=False)


def randomize_norms(model: nn.Module, seed: int = 0):
  """Non-trivial GroupNorm/BatchNorm affines and BN running statistics, so parity tests exercise them."""
  torch_hatnet.randomize_norms(model, seed)
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
        m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g))
        m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
        m.num_batches_tracked.fill_(1000)
  return model
