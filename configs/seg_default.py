"""Defaults of the segmentation configs: Semantic FPN + HAT-Net on ADE20K, PVT's recipe on mmseg 0.13.

  python main.py --config=configs/seg_fpn_hatnet_tiny.py --workdir=runs/seg_tiny \
      --config.data.manual_dir=/data/ADEChallengeData2016 --config.init_from=pretrained/tiny

AdamW lr 2e-4 (weight decay 1e-4 on every parameter, as mmseg's AdamW), poly decay (power 0.9) to 0 over
40k iterations at global batch 32, backbone drop path 0.1, head dropout 0.1; 512x512 crops of images
resized by a random ratio in [0.5, 2] of (2048, 512), cat_max_ratio 0.75, flip, photometric distortion;
single-scale whole-image evaluation at the AlignResize size every 4k iterations (mIoU ranks the kept
best checkpoint). `init_from` takes an ImageNet checkpoint of the backbone (a converted official .pth or a
classification run's DIR/checkpoints/STEP/state: the neck and head start fresh) or a whole converted
mmseg model (`python -m hatnet_jax.tools.convert --task=segmentation`).
"""
import ml_collections

from configs import default


def data_config():
  """config.data of the ADE20K recipe (the fields hatnet_jax.data.segmentation.pipeline reads)."""
  d = ml_collections.ConfigDict()
  d.dataset = 'ade20k'  # 'ade20k' | 'digit_scenes' | 'digit_scenes/small' | 'seg_folder'
  # Typed, so that --config.data.data_dir=... can set a field that defaults to None.
  d.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS data dir (None: TFDS default)
  d.manual_dir = ml_collections.FieldReference(None, field_type=str)  # ADEChallengeData2016 / seg folder root
  d.train_split = 'train'
  d.eval_split = 'validation'  # falls back to 'test' where there is no 'validation'
  d.eval_batch_size = 0  # global; 0: batch_size
  d.crop_size = 512  # training crop (and the size it is padded to)
  d.scale = (2048, 512)  # Resize / AlignResize img_scale (long, short)
  d.ratio_range = (0.5, 2.0)  # training: random ratio of `scale`
  d.cat_max_ratio = 0.75  # training crop: retried (10x) while one class covers more of it
  d.hflip_prob = 0.5
  d.photometric = True  # mmseg's PhotoMetricDistortion
  d.mean = (0.485, 0.456, 0.406)  # on [0, 1] pixels: mmseg's 123.675/58.395 ... divided by 255
  d.std = (0.229, 0.224, 0.225)
  d.ignore_index = 255
  d.align = 32  # evaluation: AlignResize size divisor
  d.prefetch = 2
  d.threads = 0
  d.cache = False
  d.num_classes = 0  # seg_folder only (0: from its classes.txt)
  d.reduce_zero_label = True  # seg_folder: label 0 -> ignored, k -> k - 1 (ADE20K always)
  return d


def get_config():
  c = default.get_config()
  c.task = 'segmentation'
  c.model.name = 'semfpn_hatnet_tiny'
  c.model.drop_path_rate = 0.1
  c.model.head_drop_rate = 0.1  # FPNHead's dropout before the classifier
  del c['mixup']  # classification only
  c.data = data_config()  # ADE20K (ADEChallengeData2016) and the mmseg transforms

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
