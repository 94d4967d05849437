"""Box pictures: shapes and dtypes, the outline covers exactly the pixels on a box's border, invalid boxes
are not drawn, boxes partly outside are clipped, tags appear where there is room, and the ground truth |
prediction panels crop each image to its valid extent and show only confident predictions."""
import numpy as np
import pytest

from hatnet_jax.visualization import boxes as pictures
from hatnet_jax.visualization.images import label_palette

NAMES = ['cat', 'dog']
RED = np.array([[255, 0, 0], [0, 255, 0]], np.uint8)


def _outline(height, width, left, top, right, bottom):
  """bool [H, W]: the border pixels of the inclusive rectangle, drawn by hand."""
  mask = np.zeros((height, width), bool)
  mask[top, left:right + 1] = mask[bottom, left:right + 1] = True
  mask[top:bottom + 1, left] = mask[top:bottom + 1, right] = True
  return mask


def test_one_box_changes_exactly_its_outline():
  image = np.zeros((40, 50, 3), np.uint8)
  out = pictures.draw_boxes(image, [[2, 3, 10, 8]], [0], None, NAMES, colors=RED, line_width=1, text=False)
  assert out.shape == image.shape and out.dtype == np.uint8
  changed = out.any(axis=-1)
  np.testing.assert_array_equal(changed, _outline(40, 50, 2, 3, 9, 7))  # pixel centres in [2, 10) x [3, 8)
  assert np.all(out[changed] == RED[0]) and not image.any()  # the input is left alone
  # Sub-pixel corners round to the pixels whose centres lie inside: [1.6, 2.4, 9.4, 8.6) -> cols 2..8, rows 2..8.
  out = pictures.draw_boxes(image, [[1.6, 2.4, 9.4, 8.6]], [1], None, NAMES, colors=RED, line_width=1, text=False)
  np.testing.assert_array_equal(out.any(axis=-1), _outline(40, 50, 2, 2, 8, 8))
  assert np.all(out[out.any(axis=-1)] == RED[1])


def test_invalid_and_unusable_boxes_are_not_drawn():
  image = np.zeros((40, 50, 3), np.uint8)
  boxes = [[2, 3, 10, 8], [20, 20, 30, 30], [np.nan, 0, 5, 5], [60, 50, 80, 70], [-30, -30, -1, -1]]
  out = pictures.draw_boxes(image, boxes, [0, 1, 0, 0, 1], [0.9, 0.8, 0.7, 0.6, 0.5], NAMES,
                            valid=[1, 0, 1, 1, 1], colors=RED, line_width=1, text=False)
  np.testing.assert_array_equal(out.any(axis=-1), _outline(40, 50, 2, 3, 9, 7))
  assert not pictures.draw_boxes(image, boxes, [0] * 5, None, NAMES, valid=np.zeros(5), text=False).any()


def test_boxes_partly_outside_are_clipped():
  image = np.zeros((30, 40, 3), np.uint8)
  out = pictures.draw_boxes(image, [[-10, 5, 20, 1e9]], [0], [1.0], NAMES, colors=RED, line_width=1, text=False)
  np.testing.assert_array_equal(out.any(axis=-1), _outline(30, 40, 0, 5, 19, 29))
  whole = pictures.draw_boxes(image, [[-5, -5, 100, 100]], [1], None, NAMES, line_width=2, text=False)
  assert whole[:2].all() and whole[-2:].all() and whole[:, :2].all() and not whole[2:-2, 2:-2].any()


def test_tags_where_there_is_room_and_none_on_tiny_images():
  big = np.zeros((120, 160, 3), np.uint8)
  boxes, labels = [[40, 60, 100, 110]], [1]
  plain = pictures.draw_boxes(big, boxes, labels, [0.87], NAMES, text=False)
  tagged = pictures.draw_boxes(big, boxes, labels, [0.87], NAMES)
  extra = tagged.any(axis=-1) & ~plain.any(axis=-1)
  rows, cols = np.nonzero(extra)
  assert rows.max() < 60 and rows.min() >= 60 - 14 and cols.min() == 40  # a tag just above the top-left corner
  colours = {tuple(c) for c in tagged[extra]}  # the class colour as the tag's fill, black or white ink
  assert tuple(label_palette(2)[1]) in colours and colours <= {tuple(label_palette(2)[1]), (255, 255, 255)}
  with_score = pictures.draw_boxes(big, boxes, labels, [0.87], NAMES).any(axis=-1).sum()
  name_only = pictures.draw_boxes(big, boxes, labels, None, NAMES).any(axis=-1).sum()
  assert with_score > name_only  # "dog 0.87" is wider than "dog"
  # At the top edge the tag goes inside the box; on a tiny image there is none.
  inside = pictures.draw_boxes(big, [[40, 0, 100, 50]], labels, None, NAMES)
  assert inside[1:12, 41:50].any() and not pictures.draw_boxes(big, [[40, 0, 100, 50]], labels, None, NAMES,
                                                               text=False)[1:12, 41:50].any()
  tiny = np.zeros((40, 200, 3), np.uint8)
  np.testing.assert_array_equal(pictures.draw_boxes(tiny, boxes, labels, [0.5], NAMES),
                                pictures.draw_boxes(tiny, boxes, labels, [0.5], NAMES, text=False))


def test_bad_input_is_named():
  with pytest.raises(ValueError, match='uint8'):
    pictures.draw_boxes(np.zeros((10, 10, 3)), [[0, 0, 1, 1]], [0], None, NAMES)
  with pytest.raises(ValueError, match='one per box'):
    pictures.draw_boxes(np.zeros((10, 10, 3), np.uint8), [[0, 0, 1, 1]], [0, 1], None, NAMES)


def test_detection_panels_crop_pad_and_threshold():
  rng = np.random.RandomState(0)
  mean, std = [0.5, 0.4, 0.3], [0.2, 0.2, 0.2]
  images = rng.randn(2, 48, 64, 3).astype(np.float32)
  sizes = np.array([[40, 64], [48, 30]])
  gt = (np.array([[[4, 4, 20, 20], [0, 0, 0, 0]], [[2, 2, 12, 40]] * 2], np.float32),
        np.array([[0, 0], [1, 1]]), np.array([[1, 0], [1, 0]], bool))
  pred = (np.array([[[4, 4, 20, 20], [30, 10, 50, 30]], [[2, 2, 12, 40], [5, 5, 25, 25]]], np.float32),
          np.array([[0, 1], [1, 0]]), np.array([[0.9, 0.1], [0.35, 0.29]]), np.ones((2, 2), bool))
  panels = pictures.detection_panels(images, mean, std, sizes, gt, pred, NAMES, score_threshold=0.3)
  assert panels.shape == (2, 48, 128, 3) and panels.dtype == np.uint8
  shown = (np.clip(images * std + mean, 0, 1) * 255 + 0.5).astype(np.uint8)
  palette = label_palette(2)[:-1]
  for i, (h, w) in enumerate(sizes):
    truth, predicted = panels[i, :, :64], panels[i, :, 64:]
    for half, boxes, labels, keep in ((truth, gt[0][i], gt[1][i], gt[2][i]),
                                      (predicted, pred[0][i], pred[1][i], (pred[3][i] & (pred[2][i] >= 0.3)))):
      assert not half[h:].any() and not half[:, w:].any()  # padding beyond the valid extent stays black
      expected = shown[i, :h, :w].copy()
      for (x1, y1, x2, y2), label in zip(boxes[keep].astype(int), labels[keep]):
        expected[_outline(h, w, x1, y1, min(x2, w) - 1, min(y2, h) - 1)] = palette[label]
      np.testing.assert_array_equal(half[:h, :w], expected)  # images under 64 px: boxes only, no tags


def test_masks_are_blended_per_instance_under_the_boxes():
  image = np.full((10, 12, 3), 100, np.uint8)
  masks = np.zeros((3, 16, 16), bool)  # larger than the crop: cut to it
  masks[0, 1:4, 1:4] = masks[1, 5:8, 5:8] = masks[2, 0:2, 0:2] = True
  colors = np.array([[255, 0, 0], [0, 255, 0]], np.uint8)
  out = pictures.overlay_masks(image, masks, [True, True, False], colors, alpha=0.5)
  np.testing.assert_array_equal(out[2, 2], [178, 50, 50])  # instance 0: (100 + 255) / 2 rounded to even
  np.testing.assert_array_equal(out[6, 6], [50, 178, 50])  # instance 1: its own colour
  np.testing.assert_array_equal(out[0, 0], [100, 100, 100])  # instance 2 is not kept
  assert (out[9:, :] == 100).all() and out.shape == image.shape
  images = np.zeros((1, 10, 12, 3), np.float32)
  no_boxes = (np.zeros((1, 3, 4), np.float32), np.zeros((1, 3), int), np.zeros((1, 3), bool))
  pred = no_boxes[:2] + (np.ones((1, 3)), np.array([[True, True, False]]))
  panels = pictures.detection_panels(images, [0.5] * 3, [1.0] * 3, [[10, 12]], no_boxes, pred, NAMES,
                                     gt_masks=masks[None], pred_masks=masks[None])
  assert (panels[0, :, :12] == 128).all()  # no valid GT: no mask drawn
  assert (panels[0, 2, 14] != 128).any() and (panels[0, 9, 23] == 128).all()  # kept instance 0 only
