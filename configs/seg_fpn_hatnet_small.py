"""Semantic FPN + HAT-Net-Small on ADE20K (PVT's recipe: see configs/seg_default.py).

  python main.py --config=configs/seg_fpn_hatnet_small.py --workdir=runs/seg_small \
      --config.data.manual_dir=/data/ADEChallengeData2016 --config.init_from=pretrained/small
"""
from configs import seg_default


def get_config():
  c = seg_default.get_config()
  c.model.name = 'semfpn_hatnet_small'
  return c
