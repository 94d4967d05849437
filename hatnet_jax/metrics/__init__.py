"""Evaluation metrics computed from model outputs: `miou` (confusion matrix, IoU/Acc as mmseg's IoUMetric),
`coco` (COCO box and mask AP: ground truth built in memory, detections and RLE masks as COCO results,
the official pycocotools COCOeval), `accumulate` (host accumulators of per-batch eval outputs). Imports numpy/JAX/pycocotools and,
of hatnet_jax, `structures` only.
"""
