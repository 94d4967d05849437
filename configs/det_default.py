"""Defaults of the detection configs: RetinaNet + HAT-Net on COCO 2017, PVT's recipe on mmdet (RetinaNet 1x).

  python -m hatnet_jax.tools.prepare_data --dataset=coco --manual_dir=/data/coco   # once, ~30 min
  python main.py --config=configs/retinanet_hatnet_tiny.py --workdir=runs/det_tiny \
      --config.data.manual_dir=/data/coco

`data_config()` holds the fields `hatnet_jax.data.detection.pipeline` reads (mmdet 3.3.0's RetinaNet 1x data
pipeline: Resize (1333, 800) keep-ratio, RandomFlip 0.5, Normalize, Pad to 32; the training filter
filter_empty_gt=True, min_size=32). `get_config()` adds the loop's generic fields (the segmentation
defaults' set), `detection_config()` RetinaNet's anchors, assigner, loss and test-time settings, and the
schedule is PVT's RetinaNet 1x.
"""
import ml_collections

from configs import default


def data_config():
  """config.data of the COCO recipe (the fields hatnet_jax.data.detection reads)."""
  d = ml_collections.ConfigDict()
  d.dataset = 'coco'  # 'coco' | 'digit_boxes' | 'digit_boxes/small'
  # Typed, so that --config.data.data_dir=... can set a field that defaults to None.
  d.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS data dir (None: TFDS default)
  d.manual_dir = ml_collections.FieldReference(None, field_type=str)  # COCO 2017 downloads (unpacked or zips)
  d.train_split = 'train'
  d.eval_split = 'validation'  # falls back to 'test' where there is no 'validation' (digit_boxes)
  d.eval_batch_size = 0  # global; 0: batch_size
  d.scale = (1333, 800)  # Resize keep_ratio: fit (long, short)
  d.hflip_prob = 0.5
  d.mean = (0.485, 0.456, 0.406)  # on [0, 1] pixels: mmdet's 123.675/58.395 ... divided by 255
  d.std = (0.229, 0.224, 0.225)
  d.size_divisor = 32  # Pad: every canvas is a multiple of it
  # Fixed (H, W) canvases: each image goes to the first that holds its resized size padded to size_divisor
  # (landscape and square -> the first, portrait -> the second, as mmdet's aspect-ratio groups).
  d.canvases = ((800, 1344), (1344, 800))
  d.max_boxes = 100  # objects per image in a batch; an image with more is an error naming it
  d.with_masks = False  # each object's instance mask in the training batches (Mask R-CNN)
  d.filter_empty_gt = True  # training skips images without annotations (mmdet's filter_cfg)
  d.min_size = 32  # ... and images whose shorter side is below this
  d.prefetch = 2
  d.threads = 0
  d.cache = False  # keep the encoded records in host memory (small datasets)
  return d


def detection_config():
  """config.detection: RetinaNet's anchors, assigner, loss and test-time settings (mmdet's retinanet_r50_fpn)."""
  return ml_collections.ConfigDict(dict(
      strides=(8, 16, 32, 64, 128),  # the FPN levels P3-P7
      octave_base_scale=4,  # anchor side = stride x 4 x 2^(i/3), i < scales_per_octave
      scales_per_octave=3,
      ratios=(0.5, 1.0, 2.0),
      pos_iou_thr=0.5,
      neg_iou_thr=0.4,
      min_pos_iou=0.0,
      focal_gamma=2.0,
      focal_alpha=0.25,
      box_loss_weight=1.0,
      images_per_group=2,  # the loss is normalised per group of images, as mmdet per GPU (8 GPUs x 2 images)
      nms_pre=1000,
      score_thr=0.05,
      nms_iou=0.5,
      max_per_img=100,
  ))


def get_config():
  c = default.get_config()
  c.task = 'detection'
  c.model.name = 'retinanet_hatnet_tiny'
  c.model.drop_path_rate = 0.1  # as the segmentation recipe
  c.model.num_anchors = 9
  del c.model['head_drop_rate']  # RetinaNet has no dropout before its head
  del c['mixup']  # classification only
  c.data = data_config()
  c.detection = detection_config()

  c.batch_size = 16  # mmdet: 8 GPUs x 2 images
  c.base_lr = 1e-4  # PVT's RetinaNet: AdamW 1e-4, weight decay 1e-4
  c.lr_base_batch = 16
  c.weight_decay = 1e-4
  c.weight_decay_on = 'all'
  c.grad_clip_norm = 0.0  # PVT: optimizer_config = dict(grad_clip=None)
  c.lr_schedule = 'step'  # mmcv's: x0.1 after epochs 8 and 11, linear warmup from 0.001 x over 500 steps
  c.lr_milestone_epochs = (8, 11)
  c.lr_milestone_steps = ml_collections.FieldReference(None, field_type=tuple)
  c.lr_decay_factor = 0.1
  c.warmup_ratio = 0.001
  c.min_lr = 0.0
  c.warmup_lr = 0.0  # (unused: warmup_ratio is set)
  c.num_epochs = 12
  c.num_steps = None
  c.warmup_epochs = None
  c.warmup_steps = 500
  c.eval_every_epochs = 1
  c.eval_every_steps = None
  c.checkpoint_every_steps = 5_000
  c.log_every_steps = 50
  c.log_images_count = 4
  return c
