"""mmsegmentation 1.2.2's own Semantic FPN: its EncoderDecoder built by mmseg's MODELS registry from its
configs/_base_/models/fpn_r50.py with PVT's settings (fpn_pvt_*_ade20k_40k.py: neck in_channels = the backbone's
dims, 256 out, num_outs 4; FPNHead 128 channels, dropout 0.1, 150 classes), on tests/references/torch_hatnet.py's
HAT-Net registered as an mmseg backbone that returns the four stage maps (torch_retinanet.HATNetBackbone).

Norm: the file's SyncBN becomes BN. PVT's config keeps fpn_r50.py's SyncBN (one BatchNorm over the 8 GPUs'
batch); torch's SyncBatchNorm needs a process group to train, so in one CPU process the same normalisation is
plain BatchNorm over the batch (our model's BatchNorm under jit is the global-batch one: the same math).

Unlike tests/references/torch_semfpn.py (written independently), this is mmseg's code: use it to time mmseg
or to compare against its loss and predict. mmseg is imported only by `build`; callers skip without it.
"""
import dataclasses
import logging
import os

import numpy as np
import torch

from tests.references import mmseg_stub, torch_retinanet

BACKBONE = torch_retinanet.BACKBONE  # the same HAT-Net backbone class, registered in mmseg's registry


def config(variant, num_classes: int = 150, neck_channels: int = 256, head_channels: int = 128):
  """mmseg's EncoderDecoder model config (mmengine ConfigDict) for a HAT-Net variant, PVT's settings."""
  import mmseg  # pylint: disable=g-import-not-at-top
  from mmengine.config import Config  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(mmseg.__file__), '.mim', 'configs', '_base_', 'models', 'fpn_r50.py')
  cfg = Config.fromfile(path).model
  cfg.pop('pretrained', None)  # the file's ResNet checkpoint; the backbone is ours
  cfg.pop('data_preprocessor', None)  # inputs arrive normalised, as model.loss / model.predict take them
  cfg.backbone = dict(type=BACKBONE, arch=dataclasses.asdict(variant))
  cfg.neck.update(in_channels=list(variant.dims), out_channels=neck_channels)  # num_outs=4 from the file
  head = cfg.decode_head
  head.update(in_channels=[neck_channels] * 4, channels=head_channels, num_classes=num_classes,
              norm_cfg=dict(type='BN', requires_grad=True))
  return cfg


def build(variant, num_classes: int = 150, seed: int = 0, drop_path_rate: float = 0.0, **widths):
  """mmseg's EncoderDecoder on the reference backbone with mmseg's init_weights, in train mode; drop-path
  rates rise linearly to `drop_path_rate` over the blocks as the official model's. `widths`: neck_channels,
  head_channels."""
  mmseg_stub.install()  # mmcv-lite has no compiled ops; mmseg imports some at module level
  from mmengine.logging import MMLogger  # pylint: disable=g-import-not-at-top
  from mmseg.registry import MODELS  # pylint: disable=g-import-not-at-top
  from mmseg.utils import register_all_modules  # pylint: disable=g-import-not-at-top
  register_all_modules()
  MODELS.register_module(name=BACKBONE, module=torch_retinanet.HATNetBackbone, force=True)
  torch.manual_seed(seed)
  model = MODELS.build(config(variant, num_classes, **widths))
  logger = MMLogger.get_current_instance()
  level = logger.level
  logger.setLevel(logging.WARNING)  # init_weights logs every parameter at INFO
  try:
    model.init_weights()
  finally:
    logger.setLevel(level)
  blocks = [b for stage in model.backbone.blocks for b in stage]
  for block, rate in zip(blocks, np.linspace(0, drop_path_rate, len(blocks))):
    block.drop_path.p = float(rate)
  return model.train()


def data_samples(batch: int, image_hw: tuple[int, int], label_hw: tuple[int, int], labels=None) -> list:
  """`batch` SegDataSamples: metainfo of images at `image_hw` whose originals (and labels) are `label_hw`;
  gt_sem_seg from `labels` (batch, *label_hw) where given."""
  from mmengine.structures import PixelData  # pylint: disable=g-import-not-at-top
  from mmseg.structures import SegDataSample  # pylint: disable=g-import-not-at-top
  out = []
  for i in range(batch):
    sample = SegDataSample(metainfo=dict(img_shape=tuple(image_hw), pad_shape=tuple(image_hw),
                                         ori_shape=tuple(label_hw), padding_size=[0, 0, 0, 0]))
    if labels is not None:
      sample.gt_sem_seg = PixelData(data=torch.from_numpy(labels[i].astype(np.int64))[None])
    out.append(sample)
  return out
