"""Demo: Semantic FPN + a small HAT-Net on digit scenes (real scikit-learn digits pasted on textured
canvases, every pixel labelled background or its digit's class), a few CPU minutes, no download.

  python main.py --config=configs/seg_digits.py --workdir=runs/seg_digits
  tensorboard --logdir=runs/seg_digits   # mIoU, each class's IoU over training, input | truth | prediction

  # The paper's workflow (pretrain -> fine-tune): the digits classifier first, then segmentation from it.
  python main.py --config=configs/digits.py --workdir=runs/digits
  python main.py --config=configs/seg_digits.py:pretrained --workdir=runs/seg_digits_pretrained

The labels are DERIVED: a pixel is its digit's class where the digit's grey level is high, background
elsewhere, and ignored on the uncertain edges (hatnet_jax/data/demos/digit_scenes.py). The transforms are
mmseg's (the ADE20K pipeline) with settings this data needs, each chosen from a measured run
(docs/segmentation.md, "Demo"): scenes at their own scale (short side 64, so digits stay 14-44 px; the
ADE20K ratios at 1/8 scale shrank some to 7 px), whole scenes in each crop (cut digits are hard to name),
no horizontal flip (a mirrored 2 is no digit: with flips the same run reached 27 % instead of 43 % mIoU at
step 750), a mild ratio jitter and weight decay (without them the model fits the 3,000 training scenes,
97.5 % pixel accuracy, and stalls at 53 % test mIoU). Evaluation is whole-image at the AlignResize size,
mIoU over 11 classes. `:tiny` is a smoke-test size for the tests.
"""
from configs import digits
from configs import seg_default


def data_config(small: bool = False):
  """config.data for digit scenes: mmseg's transforms with the settings this data needs (docstring above)."""
  d = seg_default.data_config()
  d.dataset = 'digit_scenes/small' if small else 'digit_scenes'
  d.eval_split = 'test'
  d.scale = (256, 64)  # short side 64: scenes at 0.67-1x their size, digits 14-44 px (eval: the same rule)
  d.ratio_range = (0.75, 1.25)  # a mild scale jitter (training only)
  d.crop_size = 80  # the whole scene at ratio 1 except the last 16 px of the longest (no digit cut in half)
  d.hflip_prob = 0.0  # digits are not mirror-symmetric
  d.photometric = False
  d.cache = True
  return d


def get_config(variant: str = ''):
  c = seg_default.get_config()
  c.model.name = 'semfpn_hatnet_tiny'
  c.model.update(dict(**digits.BACKBONE, neck_channels=64, head_channels=32))  # the digits classifier's backbone
  c.model.drop_path_rate = 0.0
  c.data = data_config()  # 3,000 train / 300 test scenes, 64-96 px
  c.data.eval_batch_size = 60

  c.batch_size = 32
  c.base_lr = 4e-3  # from scratch (no ImageNet backbone here): a higher rate with a short warmup
  c.lr_base_batch = 32
  c.warmup_steps = 100
  c.warmup_lr = 1e-5
  c.weight_decay = 0.05  # the classification demo's: without it the model memorises the training scenes
  c.weight_decay_on = 'kernels'
  c.num_steps = 3100
  c.eval_every_steps = 775
  c.checkpoint_every_steps = 775
  c.keep_checkpoints = 2
  c.log_every_steps = 50
  c.log_images_count = 4

  if variant == 'tiny':
    c.data = data_config(small=True)  # 96 train / 40 test scenes
    c.data.eval_batch_size = 16
    c.data.crop_size = 64  # smaller steps for the tests
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
  elif variant == 'pretrained':
    # The paper's workflow on offline data: the backbone starts from the digits classifier (run
    # `python main.py --config=configs/digits.py --workdir=runs/digits` first; its last step is 880 = 40
    # epochs of 22 steps), the neck and head fresh; everything else equal, so the figures compare at equal steps.
    c.init_from = 'runs/digits/checkpoints/880/state'
  elif variant:
    raise ValueError(f"configs/seg_digits.py: unknown variant {variant!r} (use '', 'pretrained' or 'tiny')")
  return c
