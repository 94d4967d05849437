"""mmdet 3.3.0's own Mask R-CNN, built by its MODELS registry from its mask-rcnn_r50_fpn.py config with PVT's
neck settings (mask_rcnn_pvt_*_fpn_1x_coco.py: in_channels = the backbone's dims, 256 out, num_outs 5,
start_level 0, P6 by max-pool), on tests/references/torch_retinanet.py's HAT-Net backbone (the official one,
registered as an mmdet backbone that returns the four stage maps).

mmcv-lite has no compiled RoIAlign (tests/references/mmseg_stub.py stubs it), so `RoIAlign` below, a pure-torch
RoIAlign with mmcv's semantics, is what both SingleRoIExtractors build (mmdet's build_roi_layers takes a class
as the layer type). State-dict keys are mmdet's: backbone.*, neck.{lateral,fpn}_convs.i.conv.*,
rpn_head.rpn_{conv,cls,reg}.*, roi_head.bbox_head.{shared_fcs.0,shared_fcs.1,fc_cls,fc_reg}.*,
roi_head.mask_head.{convs.i.conv,upsample,conv_logits}.*.

mmdet is imported only by `build`; callers skip when it is absent (`pytest.importorskip('mmdet')`).
"""
import dataclasses
import math
import os

import torch
from torch import nn

from tests.references import mmseg_stub, torch_hatnet, torch_retinanet

CONFIG = 'mask-rcnn_r50_fpn.py'  # mmdet 3.3.0's name (2.x called it mask_rcnn_r50_fpn.py)


def _axis_weights(coords: torch.Tensor, size: int) -> torch.Tensor:
  """[n, size] bilinear weights of sample positions `coords` [n] along one axis, as mmcv's
  bilinear_interpolate: 0 outside [-1, size], clamp to 0 below, the last row/column past size - 1."""
  weights = coords.new_zeros(len(coords), size)
  for i, c in enumerate(coords.tolist()):
    if c < -1.0 or c > size:
      continue
    c = max(c, 0.0)
    low = int(c)
    if low >= size - 1:
      weights[i, size - 1] = 1.0
      continue
    frac = c - low
    weights[i, low] += 1.0 - frac
    weights[i, low + 1] += frac
  return weights


def roi_align(feats: torch.Tensor, rois: torch.Tensor, output_size, spatial_scale: float,
              sampling_ratio: int = 0, aligned: bool = True) -> torch.Tensor:
  """mmcv's RoIAlign (pool_mode 'avg'), on the CPU: feats [N, C, H, W], rois [R, 5] (batch index, x1, y1, x2,
  y2 in image pixels) -> [R, C, ph, pw].

  Per RoI: start = coordinate * spatial_scale - (0.5 if aligned), size = (x2 - x1) * spatial_scale (at least 1
  when not aligned); each bin averages gh x gw bilinear samples at its regular grid's cell centres, gh =
  sampling_ratio or ceil(roi_h / ph) (adaptive), count = max(gh * gw, 1). Bilinear sampling is separable,
  so each RoI is A_y @ feats @ A_x^T with per-axis weight matrices; a sample is 0 when y or x lies outside
  [-1, size] (the product of the two axes' weights gives exactly that).
  """
  ph, pw = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
  _, _, height, width = feats.shape
  out = feats.new_zeros(len(rois), feats.shape[1], ph, pw)
  offset = 0.5 if aligned else 0.0
  for r, (b, x1, y1, x2, y2) in enumerate(rois.float().tolist()):
    # float32 arithmetic as the kernel's (torch scalars keep it: Python floats would be float64)
    x1, y1, x2, y2 = (torch.tensor(v, dtype=torch.float32) * spatial_scale - offset for v in (x1, y1, x2, y2))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
      roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_h, bin_w = roi_h / ph, roi_w / pw
    gh = sampling_ratio if sampling_ratio > 0 else int(math.ceil(float(roi_h / ph)))
    gw = sampling_ratio if sampling_ratio > 0 else int(math.ceil(float(roi_w / pw)))
    if gh <= 0 or gw <= 0:
      continue  # an empty box: no samples, zeros (count = max(0, 1))
    ys = (y1 + torch.arange(ph, dtype=torch.float32)[:, None] * bin_h
          + (torch.arange(gh, dtype=torch.float32)[None, :] + 0.5) * bin_h / gh).reshape(-1)
    xs = (x1 + torch.arange(pw, dtype=torch.float32)[:, None] * bin_w
          + (torch.arange(gw, dtype=torch.float32)[None, :] + 0.5) * bin_w / gw).reshape(-1)
    ay = _axis_weights(ys, height).to(feats.dtype)  # [ph * gh, H]
    ax = _axis_weights(xs, width).to(feats.dtype)  # [pw * gw, W]
    samples = torch.einsum('yh,chw,xw->cyx', ay, feats[int(b)], ax)
    out[r] = samples.reshape(-1, ph, gh, pw, gw).sum(dim=(2, 4)) / (gh * gw)
  return out


class RoIAlign(nn.Module):
  """mmcv.ops.RoIAlign's constructor and forward (avg pooling), on `roi_align` above."""

  def __init__(self, output_size, spatial_scale: float = 1.0, sampling_ratio: int = 0, pool_mode: str = 'avg',
               aligned: bool = True, use_torchvision: bool = False):
    super().__init__()
    if pool_mode != 'avg' or use_torchvision:
      raise ValueError("this reference RoIAlign is mmcv's avg mode only")
    self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    self.spatial_scale, self.sampling_ratio, self.aligned = float(spatial_scale), int(sampling_ratio), aligned

  def forward(self, feats, rois):
    return roi_align(feats, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)


def config(variant, num_classes: int = 80):
  """mmdet's Mask R-CNN model config (mmengine ConfigDict) for a HAT-Net variant, PVT's neck settings, the
  torch RoIAlign in both RoI extractors."""
  import mmdet
  from mmengine.config import Config
  path = os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'configs', '_base_', 'models', CONFIG)
  cfg = Config.fromfile(path).model
  cfg.backbone = dict(type=torch_retinanet.BACKBONE, arch=dataclasses.asdict(variant))
  cfg.neck.in_channels = list(variant.dims)  # out 256, num_outs 5, start_level 0, max-pool P6 from the file
  cfg.roi_head.bbox_head.num_classes = num_classes
  cfg.roi_head.mask_head.num_classes = num_classes
  for extractor in (cfg.roi_head.bbox_roi_extractor, cfg.roi_head.mask_roi_extractor):
    extractor.roi_layer.type = RoIAlign
  return cfg


def build(variant, num_classes: int = 80, seed: int = 0, init: str = 'torch'):
  """mmdet's Mask R-CNN on the reference backbone, in eval mode.

  init 'torch': PyTorch's default init everywhere but the backbone's norms (random, non-zero biases: every
  bias is exercised; non-trivial GroupNorm affines); 'mmdet': mmdet's init_weights.
  """
  mmseg_stub.install()  # mmcv-lite has no compiled ops; mmdet imports some at module level
  from mmdet.registry import MODELS
  from mmdet.utils import register_all_modules
  register_all_modules()
  MODELS.register_module(name=torch_retinanet.BACKBONE, module=torch_retinanet.HATNetBackbone, force=True)
  torch.manual_seed(seed)
  model = MODELS.build(config(variant, num_classes))
  if init == 'mmdet':
    model.init_weights()
  else:
    torch_hatnet.randomize_norms(model, seed)
  return model.eval()


def count_params(model) -> int:
  """Trainable parameters less the backbone's unused proj_norm GroupNorms (which hatnet_jax does not hold)."""
  return torch_retinanet.count_params(model)
