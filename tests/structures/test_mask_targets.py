"""structures.mask_targets: a hand case, then mmdet 3.3.0's mask_target on BitmapMasks (its compiled
mmcv roi_align replaced by a torch wrapper around tests/structures/reference_roi_align.py) on masks
touching the canvas border and RoIs partly outside it; chunking, padding rows, vmap."""
import importlib

import jax
import numpy as np
import pytest

from hatnet_jax.structures import mask_targets as mt
from tests.structures import reference_roi_align as ref


@pytest.fixture(name='mmdet_mask_target')
def fixture_mmdet_mask_target(mmdet, monkeypatch):
  """mmdet's mask_target_single with the transcription as `roi_align` (the name its structures module
  imported from mmcv.ops, stubbed here)."""
  del mmdet
  pytest.importorskip('torch')
  structures = importlib.import_module('mmdet.structures.mask.structures')
  monkeypatch.setattr(structures, 'roi_align', ref.torch_roi_align)
  from mmengine.config import ConfigDict  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  mask_target_single = importlib.import_module('mmdet.structures.mask.mask_target').mask_target_single

  def run(masks, boxes, gt_index, size):
    gt_masks = structures.BitmapMasks(masks, masks.shape[1], masks.shape[2])
    # A copy: mmdet clips the proposals in place, through the numpy view of the tensor.
    return mask_target_single(torch.from_numpy(boxes.copy()), torch.from_numpy(gt_index.astype(np.int64)), gt_masks,
                              ConfigDict(mask_size=size)).numpy()

  return run


def _pack(masks):
  return np.packbits(masks.astype(bool), axis=-1, bitorder='little')


def _scene(rng, num_gts, height, width, num_rois):
  """Blob masks (some touching every border, some noisy) and RoIs around them, some partly outside."""
  masks = np.zeros((num_gts, height, width), np.uint8)
  yy, xx = np.mgrid[:height, :width]
  for g in range(num_gts):
    cy, cx = rng.uniform(0, [height, width])
    ry, rx = rng.uniform(3, [height / 2, width / 2])
    masks[g] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    if g % 3 == 1:
      masks[g] &= rng.random((height, width)) < 0.8
  masks[0, :, :3] = 1  # left border
  masks[1, -2:, :] = 1  # bottom border
  masks[2, :, -1] = 1  # right border
  masks[2, 0, :] = 1  # top border
  xy = rng.uniform(-10, [width, height], (num_rois, 2))
  wh = rng.uniform(0.5, [width, height], (num_rois, 2))
  boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
  boxes[:4] = [[-5, -5, width + 5, height + 5], [0, 0, width, height], [width - 3, 2, width + 9, 11],
               [3, height - 1.5, 20, height + 4]]
  return masks, boxes, rng.integers(0, num_gts, num_rois)


def test_by_hand():
  """The left half of a 16 x 16 mask in the whole canvas at size 4: samples at integer pixels 0 .. 15,
  bins 0-1 cover columns 0-7 (ones), bins 2-3 columns 8-15 (zeros)."""
  mask = np.zeros((1, 16, 16), np.uint8)
  mask[0, :, :8] = 1
  boxes = np.array([[0, 0, 16, 16], [20, 0, 30, 16]], np.float32)  # the second clips to x = 16: empty
  got = np.asarray(mt.mask_targets(_pack(mask), boxes, np.array([0, 0]), size=4))
  np.testing.assert_array_equal(got[0], np.tile([1, 1, 0, 0], (4, 1)))
  np.testing.assert_array_equal(got[1], np.zeros((4, 4)))


@pytest.mark.parametrize('size,chunk', [(28, 16), (13, 5)])
def test_equals_mmdet(mmdet_mask_target, size, chunk):
  rng = np.random.default_rng(size)
  masks, boxes, gt_index = _scene(rng, 7, 40, 56, 37)
  want = mmdet_mask_target(masks, boxes, gt_index, size)
  fn = jax.jit(mt.mask_targets, static_argnums=(3, 4))
  got = np.asarray(fn(_pack(masks), boxes, gt_index, size, chunk))
  assert got.dtype == np.float32 and got.shape == (37, size, size)
  np.testing.assert_array_equal(got, want)
  assert 0.05 < want.mean() < 0.95  # neither trivially empty nor full


def test_vmap_over_images_and_padding_rows(mmdet_mask_target):
  rng = np.random.default_rng(1)
  scenes = [_scene(rng, 4, 24, 32, 9) for _ in range(2)]
  packed = np.stack([_pack(m) for m, _, _ in scenes])
  boxes = np.stack([b for _, b, _ in scenes])
  gt_index = np.stack([g for _, _, g in scenes])
  gt_index[1, -2:] = [-1, 99]  # padding rows: clamped to a real GT, never an error
  got = np.asarray(jax.jit(jax.vmap(lambda p, b, g: mt.mask_targets(p, b, g, 28, 4)))(packed, boxes, gt_index))
  for i, (masks, b, g) in enumerate(scenes):
    n = 9 if i == 0 else 7
    np.testing.assert_array_equal(got[i, :n], mmdet_mask_target(masks, b[:n], g[:n], 28))


def test_empty_and_errors():
  packed = np.zeros((2, 8, 1), np.uint8)
  assert mt.mask_targets(packed, np.zeros((0, 4), np.float32), np.zeros(0, np.int32)).shape == (0, 28, 28)
  with pytest.raises(ValueError, match='packed_masks must be uint8'):
    mt.mask_targets(packed.astype(np.float32), np.zeros((1, 4)), np.zeros(1, np.int32))
  with pytest.raises(ValueError, match='gt_index int'):
    mt.mask_targets(packed, np.zeros((2, 4)), np.zeros(1, np.int32))
  with pytest.raises(ValueError, match='size and chunk'):
    mt.mask_targets(packed, np.zeros((1, 4)), np.zeros(1, np.int32), size=0)
