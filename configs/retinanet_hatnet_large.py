"""RetinaNet + HAT-Net-Large on COCO 2017 (PVT's recipe for its large model: see configs/det_default.py).

  python -m hatnet_jax.tools.prepare_data --dataset=coco --manual_dir=/data/coco
  python main.py --config=configs/retinanet_hatnet_large.py --workdir=runs/det_large \
      --config.data.manual_dir=/data/coco --config.init_from=$PWD/pretrained/large

PVT's retinanet_pvt_l config trains its large backbone with 1 image per GPU (batch 8) at lr 1e-4 / 1.4;
the same here, the loss normalised per image as mmdet per GPU.
"""
from configs import det_default


def get_config():
  c = det_default.get_config()
  c.model.name = 'retinanet_hatnet_large'
  c.batch_size = 8
  c.lr_base_batch = 8
  c.base_lr = 1e-4 / 1.4
  c.detection.images_per_group = 1
  return c
