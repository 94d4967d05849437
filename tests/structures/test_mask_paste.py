"""paste_masks: equal to mmdet 3.3.0's _do_paste_mask as run on GPU (skip_empty=False) then >= 0.5, on random
masks and boxes (boxes across the image border, tiny boxes, zero-size boxes), a hand-computed case, and how
far mmdet's CPU path (skip_empty=True, per box) is from it."""
import time

import numpy as np
import pytest

from hatnet_jax.structures import mask_paste


def _do_paste_mask(mmdet):
  del mmdet  # the fixture installs the mmcv.ops stub first
  pytest.importorskip('torch')
  from mmdet.models.roi_heads.mask_heads import fcn_mask_head  # pylint: disable=g-import-not-at-top
  return fcn_mask_head._do_paste_mask  # pylint: disable=protected-access


def _case(rng, n=30, m=28):
  """Random image size, mask probabilities [n, m, m] and boxes [n, 4]: many across the border, sizes from
  0.2 px to 150 px, plus a zero-width, a zero-height and a zero-size box on a pixel centre."""
  h, w = (int(s) for s in rng.integers(20, 200, 2))
  xy = rng.uniform(-30, [w, h], (n, 2))
  wh = np.where(rng.random((n, 1)) < 0.3, rng.uniform(0.2, 3, (n, 2)), rng.uniform(3, 150, (n, 2)))
  boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
  boxes[0] = [5.3, 2.0, 5.3, h - 2]  # zero width
  boxes[1] = [2.0, 7.7, w - 2, 7.7]  # zero height
  boxes[2] = [3.5, 4.5, 3.5, 4.5]  # 0 / 0 at the pixel centre (3, 4)
  probs = rng.uniform(0, 1, (n, m, m)).astype(np.float32)
  probs[:4] = np.maximum(probs[:4], 0.6)
  probs[3] = 1.0  # a saturated sigmoid
  return probs, boxes, (h, w)


def _torch_paste(paste, probs, boxes, hw, skip_empty):
  import torch  # pylint: disable=g-import-not-at-top
  h, w = hw
  if not skip_empty:
    values, _ = paste(torch.from_numpy(probs)[:, None], torch.from_numpy(boxes.copy()), h, w, skip_empty=False)
    return values.numpy()
  out = np.zeros((len(probs), h, w), np.float32)  # mmdet on CPU: one box per chunk, its extent only
  for k in range(len(probs)):
    values, where = paste(torch.from_numpy(probs[k:k + 1])[:, None], torch.from_numpy(boxes[k:k + 1].copy()),
                          h, w, skip_empty=True)
    out[(k,) + where] = values.numpy()[0]
  return out


def test_equals_mmdet_gpu_paste(mmdet):
  paste = _do_paste_mask(mmdet)
  rng = np.random.default_rng(0)
  for _ in range(6):  # the 5th case has a pixel within an ulp of 0.5 (float64 or other orders flip it)
    probs, boxes, hw = _case(rng)
    expected = _torch_paste(paste, probs, boxes, hw, skip_empty=False) >= 0.5
    ours = mask_paste.paste_masks(probs, boxes, hw)
    assert ours.shape == expected.shape and ours.dtype == bool
    np.testing.assert_array_equal(ours, expected)
    assert expected[0].any() and expected[1].any() and not expected[2, 4, 3]  # the degenerate ones
  for threshold in (0.0, 0.3, 0.9):
    expected = _torch_paste(paste, probs, boxes, hw, skip_empty=False) >= threshold
    np.testing.assert_array_equal(mask_paste.paste_masks(probs, boxes, hw, threshold), expected)


def test_zero_width_box_paints_the_centre_column_across_the_image(mmdet):
  """mmdet's inf -> 0: every column reads the mask's centre, so a zero-width box gives full rows."""
  paste = _do_paste_mask(mmdet)
  probs = np.zeros((1, 4, 4), np.float32)
  probs[0, 1, 1:3] = 1.0  # row 1 on at the centre columns
  boxes = np.array([[10.2, 0.0, 10.2, 8.0]], np.float32)
  ours = mask_paste.paste_masks(probs, boxes, (8, 20))
  np.testing.assert_array_equal(ours, _torch_paste(paste, probs, boxes, (8, 20), False) >= 0.5)
  assert ours[0, 2:4].all() and ours[0].sum() == 2 * 20


def test_hand_case():
  """A 4x4 mask on box (2, 1)-(6, 5): pixel centres fall on the mask's pixel centres, so the paste is the mask
  shifted, 0.5 itself passes (>=), and nothing outside the box is set. Halving the box's resolution (box
  (0, 0)-(8, 8) on 8x8) puts pixel centres a quarter mask pixel off: pixel (x=2, y=0) reads source (0.75,
  -0.25): weights 0.75 in y (row -1 is padding) x (0.25 col 0 + 0.75 col 1)."""
  mask = np.array([[0.9, 0.1, 0.5, 0.0],
                   [0.2, 0.6, 0.4, 1.0],
                   [0.0, 0.0, 0.49, 0.51],
                   [1.0, 1.0, 1.0, 1.0]], np.float32)
  out = mask_paste.paste_masks(mask[None], np.array([[2, 1, 6, 5]], np.float32), (7, 9))
  expected = np.zeros((7, 9), bool)
  expected[1:5, 2:6] = mask >= 0.5
  np.testing.assert_array_equal(out[0], expected)

  probs = np.zeros((1, 4, 4), np.float32)
  probs[0, 0, 0], probs[0, 0, 1] = 0.4, 0.8  # 0.75 * (0.25 * 0.4 + 0.75 * 0.8) = 0.525
  out = mask_paste.paste_masks(probs, np.array([[0, 0, 8, 8]], np.float32), (8, 8))
  # (x=2, y=1) reads (0.75, 0.25): the same 0.525. Misses: (x=1, y=0) 0.75 * (0.75 * 0.4 + 0.25 * 0.8) = 0.375,
  # (x=3, y=0) 0.75 * 0.75 * 0.8 = 0.45, (x=0, y=0) 0.75 * 0.75 * 0.4 = 0.225.
  assert out[0, 0, 2] and out[0, 1, 2] and out.sum() == 2


def test_cpu_path_agrees_at_half_for_boxes_of_positive_size(mmdet):
  """mmdet on CPU (skip_empty=True, per box) against the GPU path: 0 differing pixels at threshold 0.5 for
  every box of positive size; zero-size boxes differ (full-image line against one within the box's pixel).
  Boxes clipped to the image, as mmdet's detections are (its CPU path fails on a box wholly outside)."""
  paste = _do_paste_mask(mmdet)
  rng = np.random.default_rng(1)
  differing, pixels, degenerate = 0, 0, 0
  for _ in range(6):
    probs, boxes, hw = _case(rng)
    boxes = np.clip(boxes, 0, [hw[1], hw[0], hw[1], hw[0]]).astype(np.float32)
    gpu = _torch_paste(paste, probs, boxes, hw, skip_empty=False) >= 0.5
    cpu = _torch_paste(paste, probs, boxes, hw, skip_empty=True) >= 0.5
    positive = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    differing += int((gpu[positive] != cpu[positive]).sum())
    pixels += gpu[positive].size
    degenerate += int((gpu[~positive] != cpu[~positive]).any(axis=(1, 2)).sum())
  assert differing == 0 and pixels > 1e6
  assert degenerate >= 12  # at least the zero-width and zero-height box of each case


def test_empty_and_bad_input():
  assert mask_paste.paste_masks(np.zeros((0, 28, 28)), np.zeros((0, 4)), (5, 7)).shape == (0, 5, 7)
  with pytest.raises(ValueError, match='same N'):
    mask_paste.paste_masks(np.zeros((2, 28, 28)), np.zeros((3, 4)), (5, 7))
  with pytest.raises(ValueError, match='image_hw'):
    mask_paste.paste_masks(np.zeros((1, 28, 28)), np.zeros((1, 4)), (0, 7))
  with pytest.raises(ValueError, match='threshold'):
    mask_paste.paste_masks(np.zeros((1, 28, 28)), np.zeros((1, 4)), (5, 7), threshold=-1)


def test_speed_100_detections_640x480():
  """Reported figure: ~0.16 s on this 2-core CPU at load average ~11 (mmdet's skip_empty=False paste in torch
  on the same inputs at the same time: ~2.1 s)."""
  rng = np.random.default_rng(2)
  probs = rng.uniform(0, 1, (100, 28, 28)).astype(np.float32)
  xy = rng.uniform(0, [640, 480], (100, 2))
  boxes = np.concatenate([xy, np.minimum(xy + rng.uniform(5, 300, (100, 2)), [640, 480])], 1).astype(np.float32)
  mask_paste.paste_masks(probs, boxes, (480, 640))
  start = time.perf_counter()
  mask_paste.paste_masks(probs, boxes, (480, 640))
  assert time.perf_counter() - start < 1.0
