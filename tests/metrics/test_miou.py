"""mIoU: mmseg's per-image areas (NumPy) and the jittable confusion-matrix path agree exactly with a plain
per-class reference, over a split whose size the batch does not divide (padding masked out)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hatnet_jax.metrics import miou

C, IGNORE = 6, 255


def _reference_areas(pred, label, num_classes, ignore=IGNORE):
  """Per class: intersect, union, pred, label pixel counts over pixels whose label is not ignored."""
  keep = label != ignore
  out = np.zeros((4, num_classes), np.int64)
  for c in range(num_classes):
    p, l = (pred == c) & keep, (label == c) & keep
    out[:, c] = [np.sum(p & l), np.sum(p | l), np.sum(p), np.sum(l)]
  return out


def _split(seed=0, n=7, size=(24, 20)):
  """n images of random sizes (at most `size`); labels in 0..3 plus ignore patches, predictions in 0..4.

  Class 4 is predicted but never labelled (IoU 0, Acc nan) and class 5 appears nowhere (both nan).
  """
  rng = np.random.RandomState(seed)
  images = []
  for _ in range(n):
    h, w = rng.randint(size[0] // 2, size[0] + 1), rng.randint(size[1] // 2, size[1] + 1)
    label = rng.randint(0, 4, (h, w))
    label[rng.rand(h, w) < 0.15] = IGNORE
    pred = np.where(rng.rand(h, w) < 0.6, np.where(label == IGNORE, 1, label), rng.randint(0, 5, (h, w)))
    images.append((pred, label))
  return images


def test_intersect_and_union_equals_reference_and_mmseg_histc_semantics():
  for pred, label in _split():
    got = np.stack(miou.intersect_and_union(pred, label, C, IGNORE))
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, _reference_areas(pred, label, C))
  # As torch.histc(min=0, max=C-1): an out-of-range label (not ignore) counts in no label area, but the
  # prediction at that pixel still counts in area_pred.
  pred, label = np.array([[0, 1, 2]]), np.array([[0, 9, IGNORE]])
  inter, union, area_pred, area_label = miou.intersect_and_union(pred, label, 3)
  assert inter.tolist() == [1, 0, 0] and area_pred.tolist() == [1, 1, 0] and area_label.tolist() == [1, 0, 0]
  assert union.tolist() == [1, 1, 0]


def test_batched_confusion_matrix_with_padding_equals_per_image_sums():
  images = _split()
  batch, (hmax, wmax) = 3, (24, 20)
  cm_fn = jax.jit(lambda p, l, v: miou.confusion_matrix(p, l, C, IGNORE, valid=v))
  total = np.zeros((C, C), np.int64)
  for start in range(0, len(images), batch):  # 7 images in batches of 3: the last holds 1 real + 2 padded
    preds = np.zeros((batch, hmax, wmax), np.int32)  # padding is class 0 (a real class) on purpose
    labels = np.zeros((batch, hmax, wmax), np.int32)
    valid = np.zeros((batch, hmax, wmax), bool)
    for i, (pred, label) in enumerate(images[start:start + batch]):
      h, w = label.shape
      preds[i, :h, :w], labels[i, :h, :w], valid[i, :h, :w] = pred, label, True
    cm = cm_fn(preds, labels, valid)
    assert cm.dtype == jnp.int32 and cm.shape == (C, C)
    total += np.asarray(cm)

  ref = sum(_reference_areas(p, l, C) for p, l in images)
  np.testing.assert_array_equal(np.stack(miou.areas_from_confusion(total)), ref)
  per_image = sum(np.stack(miou.intersect_and_union(p, l, C, IGNORE)) for p, l in images)
  np.testing.assert_array_equal(np.stack(miou.areas_from_confusion(total)), per_image)
  # Rows are labels, columns predictions.
  p0, l0 = images[0]
  cm0 = np.asarray(miou.confusion_matrix(p0, l0, C, IGNORE))
  assert cm0[2, 3] == np.sum((l0 == 2) & (p0 == 3)) and cm0[3, 2] == np.sum((l0 == 3) & (p0 == 2))


def test_confusion_matrix_excludes_ignore_and_out_of_range_labels():
  pred = jnp.array([[0, 1, 2, 1]])
  label = jnp.array([[0, IGNORE, 7, -1]])
  np.testing.assert_array_equal(miou.confusion_matrix(pred, label, 3), np.diag([1, 0, 0]))
  np.testing.assert_array_equal(miou.confusion_matrix(pred, label, 3, valid=jnp.array([[False, 1, 1, 1]])),
                                np.zeros((3, 3)))


def test_metrics_from_totals_as_mmseg():
  images = _split()
  inter, union, area_pred, area_label = (np.sum(a, axis=0) for a in
                                         zip(*(miou.intersect_and_union(p, l, C, IGNORE) for p, l in images)))
  m = miou.metrics_from_totals(inter, union, area_pred, area_label)
  iou, acc = inter[:4] / union[:4], inter[:4] / area_label[:4]
  np.testing.assert_allclose(m['IoU'][:4], iou)
  np.testing.assert_allclose(m['Acc'][:4], acc)
  assert m['IoU'][4] == 0.0 and np.isnan(m['Acc'][4])  # predicted, never labelled
  assert np.isnan(m['IoU'][5]) and np.isnan(m['Acc'][5])  # absent everywhere
  assert m['mIoU'] == pytest.approx(np.mean(list(iou) + [0.0]))
  assert m['mAcc'] == pytest.approx(np.mean(acc))
  assert m['aAcc'] == pytest.approx(inter.sum() / area_label.sum())
  assert 0.5 < m['aAcc'] < 1.0
