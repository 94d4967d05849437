"""Defaults of the Mask R-CNN configs: HAT-Net + Mask R-CNN on COCO 2017, PVT's recipe on mmdet (Mask R-CNN 1x).

  python -m hatnet_jax.tools.prepare_data --dataset=coco --manual_dir=/data/coco   # once
  python main.py --config=configs/maskrcnn_hatnet_tiny.py --workdir=runs/maskrcnn_tiny \
      --config.data.manual_dir=/data/coco --config.init_from=$PWD/pretrained/tiny

The data, optimizer and schedule are the RetinaNet 1x recipe's (configs/det_default.py: AdamW 1e-4, weight decay
1e-4, batch 16 = 8 GPUs x 2, 12 epochs, x0.1 after 8 and 11, 500 warmup steps), with the instance masks on.
`maskrcnn_config()` is mmdet 3.3.0's mask_rcnn_r50_fpn.py train_cfg / test_cfg (PVT's mask_rcnn_pvt_*_fpn_1x
configs change only the backbone and the neck's in_channels).
"""
import ml_collections

from configs import det_default


def maskrcnn_config():
  """config.detection for Mask R-CNN: RPN anchors, assigners, samplers, proposal and test settings."""
  return ml_collections.ConfigDict(dict(
      # RPN: AnchorGenerator(scales=[8], ratios=[0.5, 1, 2], strides=[4, 8, 16, 32, 64]).
      rpn_strides=(4, 8, 16, 32, 64),
      rpn_anchor_scale=8,
      rpn_ratios=(0.5, 1.0, 2.0),
      rpn_pos_iou_thr=0.7,
      rpn_neg_iou_thr=0.3,
      rpn_min_pos_iou=0.3,
      rpn_num_samples=256,
      rpn_pos_fraction=0.5,
      rpn_train_nms_pre=2000,  # rpn_proposal in train_cfg
      rpn_test_nms_pre=1000,  # rpn in test_cfg
      rpn_max_per_img=1000,
      rpn_nms_iou=0.7,
      rpn_min_bbox_size=0.0,
      # RoI head: MaxIoUAssigner 0.5 / 0.5, RandomSampler 512 at a quarter positive, GTs added as proposals.
      rcnn_pos_iou_thr=0.5,
      rcnn_neg_iou_thr=0.5,
      rcnn_min_pos_iou=0.5,
      rcnn_num_samples=512,
      rcnn_pos_fraction=0.25,
      rcnn_max_candidates=4000,  # (RoI, class) pairs above score_thr kept for NMS at test; more are counted
      # RoIAlign gathers a static window of each RoI's level (exact when its support fits; the misfits are
      # counted as train_roi_align_overflow); () pools from whole maps (exact, costly on large maps).
      roi_window=(42, 42),
      mask_target_chunk=16,  # positive RoIs per lax.map step of the mask targets (memory: ~6 MB each at 800x1344)
      images_per_group=2,  # losses normalised per group of images, as mmdet per GPU (8 GPUs x 2 images)
      # Test: rcnn score_thr 0.05, NMS 0.5, 100 per image; masks thresholded at 0.5 after pasting.
      score_thr=0.05,
      nms_iou=0.5,
      max_per_img=100,
  ))


def get_config():
  c = det_default.get_config()
  c.task = 'instance_segmentation'
  c.model.name = 'maskrcnn_hatnet_tiny'
  c.model.num_anchors = 3
  c.data.with_masks = True
  c.detection = maskrcnn_config()
  return c
