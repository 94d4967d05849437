"""Box operations for detection as jittable JAX, each matching mmdetection 3.3.0 (or torchvision) and
tested against it: `boxes` (area, IoU/IoF, clip, flip, scale), `coder` (DeltaXYWHBBoxCoder), `anchors`
(AnchorGenerator grids and valid flags), `nms` (fixed-size NMS, class-wise NMS), `assign` (MaxIoUAssigner),
`dense_detections` (RetinaNet's test-time post-processing); for Mask R-CNN `proposals` (RPN proposals),
`sampling` (RandomSampler, GTs added as proposals), `roi_targets` (box head targets), `roi_align` (RoIAlign with
mmcv semantics, level mapping, multi-level extraction through a static window), `roi_detections` (box head
post-processing), `mask_targets` (GT masks cropped and resized by RoIAlign) and `mask_paste` (NumPy, host side:
28x28 masks pasted at the original image size, mmdet's GPU path); `exact` holds the float32 rounding guard that
keeps them bit-equal to PyTorch's CPU arithmetic. Boxes are float32 xyxy pixels without the +1 of old
mmdet. Imports jax and numpy only: nothing else of hatnet_jax (no flax either), so every folder may use it.
"""
