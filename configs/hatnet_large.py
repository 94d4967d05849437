"""HAT-Net-Large on ImageNet-1k with the PVT recipe (300 epochs, global batch 1024, AdamW, lr 1e-3).

  python main.py --config=configs/hatnet_large.py --workdir=runs/hatnet_large \
      --config.data.manual_dir=/path/to/imagenet_tars
"""
from configs import default


def get_config():
  c = default.get_config()
  c.model.name = 'hatnet_large'
  c.model.drop_path_rate = 0.3
  c.grad_clip_norm = 1.0  # the large model trains with gradient clipping
  return c
