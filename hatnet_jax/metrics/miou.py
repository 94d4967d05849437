"""Segmentation metrics as mmseg 0.13 computes them (mIoU, mAcc, aAcc), per image in NumPy or per batch in JAX.

The JAX path accumulates a [C, C] confusion matrix on device (jittable, sharding-agnostic, with a mask for
padded images/pixels); its areas are the same integers as summing `intersect_and_union` over the images.
"""
import jax.numpy as jnp
import numpy as np


def intersect_and_union(pred, label, num_classes: int, ignore_index: int = 255):
  """mmseg's intersect_and_union for one image: int64 (area_intersect, area_union, area_pred, area_label).

  Pixels whose label is ignore_index are dropped first (so predictions there count nowhere); each area is
  then a per-class histogram over [0, num_classes) (values outside are not counted, as torch.histc).
  """
  pred, label = np.asarray(pred).ravel(), np.asarray(label).ravel()
  keep = label != ignore_index
  pred, label = pred[keep], label[keep]

  def hist(v):
    v = v[(v >= 0) & (v < num_classes)].astype(np.int64)
    return np.bincount(v, minlength=num_classes).astype(np.int64)

  area_intersect = hist(pred[pred == label])
  area_pred, area_label = hist(pred), hist(label)
  return area_intersect, area_pred + area_label - area_intersect, area_pred, area_label


def confusion_matrix(pred, label, num_classes: int, ignore_index: int = 255, valid=None):
  """int32 [C, C] counts, rows the label and columns the prediction; jittable.

  Excluded pixels: label == ignore_index, a label outside [0, C), and where the optional bool mask `valid`
  (broadcastable to label, e.g. padded images or padded borders) is False. Predictions are argmax
  indices in [0, C); an out-of-range prediction drops the pixel. int32 holds up to 2^31 pixels per call:
  accumulate across batches on the host in int64 (`areas_from_confusion` returns int64).
  """
  pred, label = jnp.asarray(pred).astype(jnp.int32), jnp.asarray(label).astype(jnp.int32)
  keep = (label != ignore_index) & (label >= 0) & (label < num_classes) & (pred >= 0) & (pred < num_classes)
  if valid is not None:
    keep = keep & jnp.broadcast_to(jnp.asarray(valid, bool), label.shape)
  index = jnp.where(keep, label * num_classes + pred, num_classes * num_classes)  # dropped: an extra bin
  counts = jnp.bincount(index.ravel(), length=num_classes * num_classes + 1)
  return counts[:-1].reshape(num_classes, num_classes).astype(jnp.int32)


def areas_from_confusion(cm):
  """int64 (area_intersect, area_union, area_pred, area_label) of a [C, C] confusion matrix (rows: label)."""
  cm = np.asarray(cm, np.int64)
  area_intersect = np.diag(cm).copy()
  area_pred, area_label = cm.sum(axis=0), cm.sum(axis=1)
  return area_intersect, area_pred + area_label - area_intersect, area_pred, area_label


def metrics_from_totals(area_intersect, area_union, area_pred, area_label) -> dict:
  """mmseg's summary of dataset-total areas: aAcc, mIoU, mAcc and the per-class IoU and Acc arrays.

  IoU = intersect / union and Acc = intersect / label per class; a class with a zero denominator gets nan
  (Acc: absent from the labels; IoU: absent from both labels and predictions) and the means skip nans
  (np.nanmean), as mmseg. area_pred is accepted for symmetry with the areas' order but not needed.
  """
  del area_pred
  inter, union, label = (np.asarray(a, np.float64) for a in (area_intersect, area_union, area_label))
  with np.errstate(divide='ignore', invalid='ignore'):
    iou, acc = inter / union, inter / label
    a_acc = inter.sum() / label.sum()
  return {'aAcc': float(a_acc), 'mIoU': float(np.nanmean(iou)), 'mAcc': float(np.nanmean(acc)), 'IoU': iou,
          'Acc': acc}
