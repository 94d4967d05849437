"""Demo: a small HAT-Net on the built-in digits dataset (scikit-learn's 8x8 scans), a few CPU minutes.

  python main.py --config=configs/digits.py --workdir=runs/digits
  tensorboard --logdir=runs/digits

`--config=configs/digits.py:tiny` is a smoke-test size (one stage of width 8, a dozen steps, compiles in
seconds), used by the tests.
"""

from configs import default

# The backbone of both digits demos: a 4-stage HAT-Net with one block per stage at widths 32..128 (0.6M
# parameters). configs/seg_digits.py builds its Semantic FPN on the same one, so that this demo's checkpoint
# starts the segmentation backbone (configs/seg_digits.py:pretrained).
BACKBONE = dict(dims=(32, 64, 96, 128), head_dim=16, depths=(1, 1, 1, 1), expansions=(4, 4, 4, 4),
                grid_sizes=(2, 1, 1, 1), ds_ratios=(2, 1, 1, 1), kernel_sizes=(3, 3, 3, 3), stem_dim=16)


def get_config(variant: str = ''):
  c = default.get_config()
  c.model.name = 'hatnet_tiny'
  c.model.update(BACKBONE)
  c.model.drop_path_rate = 0.0
  c.model.head_drop_rate = 0.0

  c.data.dataset = 'digits'  # 1,440 train / 357 test images, 10 classes
  c.data.train_split = 'train'
  c.data.eval_split = 'test'
  c.data.image_size = 16
  c.data.eval_crop_ratio = 1.0
  c.data.crop_scale = (0.6, 1.0)
  c.data.hflip_prob = 0.0  # digits are not mirror-symmetric
  c.data.randaugment = ''
  c.data.erase_prob = 0.0
  c.mixup.mixup_alpha = 0.0
  c.mixup.cutmix_alpha = 0.0
  c.mixup.mixup_prob = 0.0
  c.mixup.label_smoothing = 0.1
  c.data.cache = True
  c.data.eval_batch_size = 120

  c.batch_size = 64
  c.base_lr = 2e-3
  c.lr_base_batch = 64
  c.min_lr = 1e-5
  c.warmup_lr = 1e-5
  c.num_epochs = 40
  c.warmup_epochs = 2
  c.eval_every_epochs = 10
  c.weight_decay = 0.05

  c.log_every_steps = 50
  c.checkpoint_every_steps = 300
  c.keep_checkpoints = 2
  c.log_images_every_steps = 500

  if variant == 'tiny':
    c.model.update(dict(dims=(8,), head_dim=8, depths=(1,), expansions=(2,), grid_sizes=(2,), ds_ratios=(2,),
                        kernel_sizes=(3,), stem_dim=8))
    c.batch_size = 16
    c.num_steps = 12
    c.warmup_steps = 2
    c.eval_every_steps = 6
    c.log_every_steps = 1
    c.checkpoint_every_steps = 4
    c.keep_checkpoints = 5
    c.log_images_every_steps = 6
    c.log_images_count = 4
  elif variant:
    raise ValueError(f"configs/digits.py: unknown variant {variant!r} (use '' or 'tiny')")
  return c
