"""RetinaNet + HAT-Net-Medium on COCO 2017 (PVT's RetinaNet 1x recipe on mmdet: see configs/det_default.py).

  python -m hatnet_jax.tools.prepare_data --dataset=coco --manual_dir=/data/coco
  python main.py --config=configs/retinanet_hatnet_medium.py --workdir=runs/det_medium \
      --config.data.manual_dir=/data/coco --config.init_from=$PWD/pretrained/medium
"""
from configs import det_default


def get_config():
  c = det_default.get_config()
  c.model.name = 'retinanet_hatnet_medium'
  return c
