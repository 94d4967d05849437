"""Mask R-CNN + HAT-Net-Large on COCO 2017 (PVT's Mask R-CNN 1x recipe on mmdet: see configs/maskrcnn_default.py).

  python -m hatnet_jax.tools.prepare_data --dataset=coco --manual_dir=/data/coco
  python main.py --config=configs/maskrcnn_hatnet_large.py --workdir=runs/maskrcnn_large \
      --config.data.manual_dir=/data/coco --config.init_from=$PWD/pretrained/large

PVT trains its large backbone with 1 image per GPU (batch 8) at lr 1e-4 / 1.4; the same here, the losses
normalised per image as mmdet per GPU."""
from configs import maskrcnn_default


def get_config():
  c = maskrcnn_default.get_config()
  c.model.name = 'maskrcnn_hatnet_large'
  c.batch_size = 8
  c.lr_base_batch = 8
  c.base_lr = 1e-4 / 1.4
  c.detection.images_per_group = 1
  return c
