"""Demo: Semantic FPN + a small HAT-Net on digit scenes (real scikit-learn digits pasted on textured
canvases, every pixel labelled background or its digit's class), a few CPU minutes, no download.

  python main.py --config=configs/seg_digits.py --workdir=runs/seg_digits
  tensorboard --logdir=runs/seg_digits   # mIoU, per-class IoU table, input | truth | prediction panels

The labels are DERIVED: a pixel is its digit's class where the digit's grey level is high, background
elsewhere, and ignored on the uncertain edges (hatnet_jax/data/demos/digit_scenes.py). The same mmseg transforms
as ADE20K run at 1/8 of its scale (crop 64, scale (256, 64)); evaluation is whole-image at the AlignResize
size, mIoU over 11 classes. `--config=configs/seg_digits.py:tiny` is a smoke-test size for the tests.
"""
from configs import digits
from configs import seg_default


def data_config(small: bool = False):
  """config.data for digit scenes: the ADE20K transforms at 1/8 of its scale (64-96 px scenes)."""
  d = seg_default.data_config()
  d.dataset = 'digit_scenes/small' if small else 'digit_scenes'
  d.eval_split = 'test'
  d.crop_size = 64
  d.scale = (256, 64)
  d.cache = True
  return d


def get_config(variant: str = ''):
  c = seg_default.get_config()
  c.model.name = 'semfpn_hatnet_tiny'
  c.model.update(dict(**digits.BACKBONE, neck_channels=64, head_channels=32))  # the digits classifier's backbone
  c.model.drop_path_rate = 0.0
  c.data = data_config()  # 3,000 train / 300 test scenes, 64-96 px
  # Digits are 20-44 px in scenes of 64-96 px: scale (384, 96) and ratios 0.75-1.5 keep them large enough to
  # tell apart after the resize (ADE20K's 0.5-2 of (2048, 512), scaled down, would shrink some to 8 px).
  c.data.scale = (384, 96)
  c.data.ratio_range = (0.75, 1.5)
  c.data.eval_batch_size = 60

  c.batch_size = 32
  c.base_lr = 4e-3  # from scratch (no ImageNet backbone here): a higher rate with a short warmup
  c.lr_base_batch = 32
  c.warmup_steps = 100
  c.warmup_lr = 1e-5
  c.weight_decay = 1e-4
  c.num_steps = 1500
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 2
  c.log_every_steps = 50
  c.log_images_count = 4

  if variant == 'tiny':
    c.data = data_config(small=True)  # 96 train / 40 test scenes
    c.data.eval_batch_size = 16
    c.data.photometric = False
    c.model.update(dict(dims=(8, 16), depths=(1, 1), expansions=(2, 2), grid_sizes=(2, 1), ds_ratios=(2, 1),
                        kernel_sizes=(3, 3), head_dim=8, stem_dim=8, neck_channels=8, head_channels=8))
    c.batch_size = 16
    c.num_steps = 8
    c.warmup_steps = 2
    c.eval_every_steps = 4
    c.checkpoint_every_steps = 4
    c.log_every_steps = 1
    c.keep_checkpoints = 5
    c.log_images_count = 2
  elif variant:
    raise ValueError(f"configs/seg_digits.py: unknown variant {variant!r} (use '' or 'tiny')")
  return c
