"""HAT-Net-Tiny on ImageNet-1k with the PVT recipe (300 epochs, global batch 1024, AdamW, lr 1e-3).

  python main.py --config=configs/hatnet_tiny.py --workdir=runs/hatnet_tiny \
      --config.data.manual_dir=/path/to/imagenet_tars
"""
from configs import default


def get_config():
  c = default.get_config()
  c.model.name = 'hatnet_tiny'
  c.model.drop_path_rate = 0.1
  return c
