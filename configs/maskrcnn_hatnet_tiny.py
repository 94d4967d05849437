"""Mask R-CNN + HAT-Net-Tiny on COCO 2017 (PVT's Mask R-CNN 1x recipe on mmdet: see configs/maskrcnn_default.py).

  python -m hatnet_jax.tools.prepare_data --dataset=coco --manual_dir=/data/coco
  python main.py --config=configs/maskrcnn_hatnet_tiny.py --workdir=runs/maskrcnn_tiny \
      --config.data.manual_dir=/data/coco --config.init_from=$PWD/pretrained/tiny
"""
from configs import maskrcnn_default


def get_config():
  c = maskrcnn_default.get_config()
  c.model.name = 'maskrcnn_hatnet_tiny'
  return c
