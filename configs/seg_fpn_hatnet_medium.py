"""Semantic FPN + HAT-Net-Medium on ADE20K (PVT's recipe: see configs/seg_default.py).

  python main.py --config=configs/seg_fpn_hatnet_medium.py --workdir=runs/seg_medium \
      --config.data.manual_dir=/data/ADEChallengeData2016 --config.init_from=pretrained/medium
"""
from configs import seg_default


def get_config():
  c = seg_default.get_config()
  c.model.name = 'semfpn_hatnet_medium'
  return c
