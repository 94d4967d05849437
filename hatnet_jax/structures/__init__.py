"""Box operations for detection as jittable JAX, each matching mmdetection 3.3.0 (or torchvision) and
tested against it: `boxes` (area, IoU/IoF, clip, flip, scale), `coder` (DeltaXYWHBBoxCoder), `anchors`
(AnchorGenerator grids and valid flags), `nms` (fixed-size NMS, class-wise NMS), `assign` (MaxIoUAssigner),
`dense_detections` (RetinaNet's test-time post-processing); `exact` holds the float32 rounding guard that
keeps them bit-equal to PyTorch's CPU arithmetic. Boxes are float32 xyxy pixels without the +1 of old
mmdet. Imports jax and numpy only: nothing else of hatnet_jax (no flax either), so every folder may use it.
"""
