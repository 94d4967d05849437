"""mmdet 3.3.0's own RetinaNet, built by its MODELS registry from its retinanet_r50_fpn.py config with PVT's
neck settings (retinanet_pvt_*_fpn_1x_coco.py: in_channels = the backbone's dims, start_level=1,
add_extra_convs='on_input', num_outs=5), on tests/references/torch_hatnet.py's HAT-Net registered as an mmdet
backbone that returns the four stage maps. State-dict keys are mmdet's: backbone.* (official HAT-Net layout,
no classifier), neck.lateral_convs.i.conv.*, neck.fpn_convs.i.conv.*, bbox_head.{cls,reg}_convs.i.conv.*,
bbox_head.retina_cls.*, bbox_head.retina_reg.*.

mmdet is imported only by `build`; callers skip when it is absent (`pytest.importorskip('mmdet')`).
"""
import dataclasses
import os
import types

import torch

from tests.references import mmseg_stub, torch_hatnet

BACKBONE = 'ReferenceHATNet'


class HATNetBackbone(torch_hatnet.HATNet):
  """The reference HAT-Net without its classifier; forward gives the 4 stage maps (strides 4 ... 32)."""

  def __init__(self, arch: dict, init_cfg=None):
    del init_cfg
    super().__init__(types.SimpleNamespace(**arch))
    del self.classifier

  def forward(self, x):
    return tuple(self.features(x))


def config(variant, num_classes: int = 80):
  """mmdet's RetinaNet model config (mmengine ConfigDict) for a HAT-Net variant, PVT's neck settings."""
  import mmdet
  from mmengine.config import Config
  path = os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'configs', '_base_', 'models',
                      'retinanet_r50_fpn.py')
  cfg = Config.fromfile(path).model
  cfg.backbone = dict(type=BACKBONE, arch=dataclasses.asdict(variant))
  cfg.neck.in_channels = list(variant.dims)  # start_level=1, add_extra_convs='on_input', num_outs=5 from the file
  cfg.bbox_head.num_classes = num_classes
  return cfg


def build(variant, num_classes: int = 80, seed: int = 0, init: str = 'torch'):
  """mmdet's RetinaNet on the reference backbone, in eval mode.

  init 'torch': PyTorch's default init for neck and head (random, non-zero biases: every bias is exercised)
  and non-trivial GroupNorm affines; 'mmdet': mmdet's init_weights (xavier FPN, normal(0.01) head, prior bias).
  """
  mmseg_stub.install()  # mmcv-lite has no compiled ops; mmdet imports some at module level
  from mmdet.registry import MODELS
  from mmdet.utils import register_all_modules
  register_all_modules()
  MODELS.register_module(name=BACKBONE, module=HATNetBackbone, force=True)
  torch.manual_seed(seed)
  model = MODELS.build(config(variant, num_classes))
  if init == 'mmdet':
    model.init_weights()
  else:
    torch_hatnet.randomize_norms(model, seed)
  return model.eval()


def count_params(model) -> int:
  """Trainable parameters less the backbone's unused proj_norm GroupNorms (which hatnet_jax does not hold)."""
  return sum(p.numel() for k, p in model.named_parameters() if '.attn.proj_norm.' not in k)
