"""Defaults of the segmentation configs: Semantic FPN + HAT-Net on ADE20K, PVT's recipe on mmseg 0.13.

  python main.py --config=configs/seg_fpn_hatnet_tiny.py --workdir=runs/seg_tiny \
      --config.data.manual_dir=/data/ADEChallengeData2016 --config.init_from=pretrained/tiny

AdamW lr 2e-4 (weight decay 1e-4 on every parameter, as mmseg's AdamW), poly decay (power 0.9) to 0 over
40k iterations at global batch 32, backbone drop path 0.1, head dropout 0.1; 512x512 crops of images
resized by a random ratio in [0.5, 2] of (2048, 512), cat_max_ratio 0.75, flip, photometric distortion;
single-scale whole-image evaluation at the AlignResize size every 4k iterations (mIoU ranks the kept
best checkpoint). `init_from` takes an ImageNet checkpoint of the backbone (a converted official .pth or a
classification run's DIR/checkpoints/STEP/state: the neck and head start fresh) or a whole converted
mmseg model (`python -m hatnet_jax.convert --task=segmentation`).
"""
from configs import default
from hatnet_jax.data import seg_pipeline


def get_config():
  c = default.get_config()
  c.task = 'segmentation'
  c.model.name = 'semfpn_hatnet_tiny'
  c.model.drop_path_rate = 0.1
  c.model.head_drop_rate = 0.1  # FPNHead's dropout before the classifier
  del c['mixup']  # classification only
  c.data = seg_pipeline.default_data_config()  # ADE20K (ADEChallengeData2016) and the mmseg transforms

  c.batch_size = 32
  c.base_lr = 2e-4
  c.lr_base_batch = 32
  c.weight_decay = 1e-4
  c.weight_decay_on = 'all'
  c.lr_schedule = 'poly'
  c.lr_power = 0.9
  c.min_lr = 0.0
  c.warmup_lr = 0.0
  c.num_epochs = None
  c.num_steps = 40_000
  c.warmup_epochs = None
  c.warmup_steps = 0
  c.eval_every_epochs = None
  c.eval_every_steps = 4_000
  c.checkpoint_every_steps = 4_000
  c.log_every_steps = 50
  c.log_images_count = 4  # eval: input | ground truth | prediction panels in TensorBoard
  return c
