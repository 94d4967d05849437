"""Demo: RetinaNet + a small HAT-Net on digit boxes (the digit scenes with one box per pasted digit), a few CPU
minutes, no download.

  python main.py --config=configs/retinanet_digits.py --workdir=runs/retinanet_digits
  tensorboard --logdir=runs/retinanet_digits   # losses, AP/AP50/AP75/APs/APm/APl, per-class AP, boxes

The boxes are DERIVED: each is the extent of a pasted digit's visible ink (hatnet_jax/data/demos/digit_boxes.py).
Scenes are 64-96 px and used at their own size (scale (96, 96) resizes none of them; one 96 x 96 canvas);
digits are 12-44 px, so the anchors start at 16 px (octave_base_scale 2) where COCO's start at 32. Everything
else is the COCO recipe's (configs/det_default.py) except the rate and schedule of a from-scratch run, and
no horizontal flip (a mirrored 2 is no digit). `:tiny` is a smoke-test size for the tests.
"""
from configs import det_default
from configs import digits


def data_config(small: bool = False):
  d = det_default.data_config()
  d.dataset = 'digit_boxes/small' if small else 'digit_boxes'
  d.eval_split = 'test'
  d.scale = (96, 96)  # keep-ratio fit: every 64-96 px scene stays at its size
  d.canvases = ((96, 96),)
  d.hflip_prob = 0.0
  d.max_boxes = 8  # 2-4 digits per scene
  d.min_size = 0
  d.cache = True
  return d


def get_config(variant: str = ''):
  c = det_default.get_config()
  c.model.name = 'retinanet_hatnet_tiny'
  c.model.update(dict(**digits.BACKBONE, neck_channels=64, head_channels=64))  # the digits classifier's backbone
  c.model.drop_path_rate = 0.0
  c.data = data_config()
  c.data.eval_batch_size = 60
  c.detection.octave_base_scale = 2  # anchors 16-25 px at P3 (stride 8), 32-50 at P4, ...

  c.batch_size = 32
  c.detection.images_per_group = 2
  c.base_lr = 1e-3
  c.lr_base_batch = 32
  c.weight_decay = 0.05
  c.weight_decay_on = 'kernels'
  c.num_epochs = None
  c.num_steps = 1800  # ~19 epochs of the 3,000 scenes, what fits in 15 minutes on the 2-core CPU
  c.warmup_steps = 100
  c.lr_milestone_epochs = None
  c.lr_milestone_steps = (1350, 1620)  # x0.1 at 75 % and 90 % of the run, as 1x's epochs 8 and 11 of 12
  c.eval_every_epochs = None
  c.eval_every_steps = 450
  c.checkpoint_every_steps = 450
  c.keep_checkpoints = 2
  c.log_every_steps = 50
  c.log_images_count = 4

  if variant == 'tiny':
    c.data = data_config(small=True)  # 96 train / 40 test scenes
    c.data.eval_batch_size = 16
    c.model.update(dict(dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), head_dim=8, stem_dim=8, neck_channels=8,
                        head_channels=8))
    c.batch_size = 16
    c.num_steps = 8
    c.warmup_steps = 2
    c.lr_milestone_steps = (6,)
    c.eval_every_steps = 4
    c.checkpoint_every_steps = 4
    c.log_every_steps = 1
    c.keep_checkpoints = 5
    c.log_images_count = 2
  elif variant:
    raise ValueError(f"configs/retinanet_digits.py: unknown variant {variant!r}; use '' or 'tiny'")
  return c
