"""Demo: Mask R-CNN + a small HAT-Net on digit scenes with instance masks, a few CPU minutes, no download.

  python main.py --config=configs/maskrcnn_digits.py --workdir=runs/maskrcnn_digits
  tensorboard --logdir=runs/maskrcnn_digits   # losses, box and mask AP, per-class AP, boxes and masks

The masks and boxes are DERIVED: each is a pasted digit's visible ink and its extent
(hatnet_jax/data/demos/digit_boxes.py). Scenes are 64-96 px, used at their own size (one 96 x 96 canvas);
digits are 12-44 px, so the RPN anchors are 16 px at stride 4 (rpn_anchor_scale 4) where COCO's are 32 px.
The proposal and sample counts are scaled to a 96 px scene with 2-4 objects (300 proposals, 64 RoIs a quarter
positive), RoIAlign reads a 14 x 14 window (a 48 px digit's support at stride 4) and the mask head is 16 channels
wide (what fits the CPU budget: see the comment below); everything else is the COCO recipe's (configs/maskrcnn_default.py) except the rate and schedule of a
from-scratch run, and no horizontal flip (a mirrored 2 is no digit). `:tiny` is a smoke-test size for the tests.
"""
from configs import digits
from configs import maskrcnn_default
from configs import retinanet_digits


def get_config(variant: str = ''):
  c = maskrcnn_default.get_config()
  # A narrow mask head (16 channels): XLA's CPU weight gradient of its 3x3 convs at 14x14 made 64 channels 5.7 s per
  # step against 0.66 s (batch 16).
  c.model.update(dict(**digits.BACKBONE, neck_channels=64, rpn_channels=64, fc_channels=256, mask_channels=16))
  c.model.drop_path_rate = 0.0
  c.data = retinanet_digits.data_config()
  c.data.with_masks = True
  c.data.eval_batch_size = 60
  det = c.detection
  det.rpn_anchor_scale = 4
  det.rpn_train_nms_pre = 1000
  det.rpn_test_nms_pre = 1000
  det.rpn_max_per_img = 300
  det.rcnn_num_samples = 64
  det.rcnn_max_candidates = 1000
  det.roi_window = (14, 14)  # a 48 px digit's support at stride 4; larger proposals are counted as overflow
  det.mask_target_chunk = 64

  c.batch_size = 16
  det.images_per_group = 2
  c.base_lr = 1e-3
  c.lr_base_batch = 32
  c.weight_decay = 0.05
  c.weight_decay_on = 'kernels'
  c.num_epochs = None
  c.num_steps = 1800
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
    c.data = retinanet_digits.data_config(small=True)  # 96 train / 40 test scenes
    c.data.with_masks = True
    c.data.eval_batch_size = 16
    c.model.update(dict(dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), head_dim=8, stem_dim=8, neck_channels=8,
                        rpn_channels=8, fc_channels=16, mask_channels=8))
    det.rpn_max_per_img = 50
    det.rcnn_num_samples = 32
    det.rcnn_max_candidates = 200
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
    raise ValueError(f"configs/maskrcnn_digits.py: unknown variant {variant!r}; use '' or 'tiny'")
  return c
