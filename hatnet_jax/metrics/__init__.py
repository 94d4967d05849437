"""Evaluation metrics computed from model outputs: `miou` (confusion matrix, IoU/Acc as mmseg's IoUMetric)
now; the COCO box and mask AP of detection belongs here too. Imports numpy/JAX only, no other hatnet_jax
folder.
"""
