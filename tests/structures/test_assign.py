"""structures.assign: hand-made cases with their expected codes, then the same cases and random images
against mmdet 3.3.0's MaxIoUAssigner (slow: the reference pass)."""
import jax
import numpy as np
import pytest

from hatnet_jax.structures import anchors as anchor_lib
from hatnet_jax.structures import assign
from tests.structures.conftest import random_boxes

RETINA = dict(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0)
ANCHORS = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30], [0, 0, 10, 20], [40, 40, 50, 50]], np.float32)


def _case(name):
  """(anchor_valid, gt_boxes, gt_valid, gt_ignore, extra kwargs, expected) of a hand-made case."""
  all_valid = np.ones(len(ANCHORS), bool)
  cases = {
      # Best IoU 70/230 (anchor 1), below neg_iou_thr: negative everywhere, then low quality makes it GT 0's.
      'no_anchor_over_half': (all_valid, [[2, 2, 22, 12]], [True], [False], {}, [0, 1, 0, 0, 0]),
      # Anchor 0's IoU is 100/250 = 0.4 exactly: not < neg_iou_thr, not positive, not the GT's best (anchor 3,
      # 0.8): ignored.
      'iou_on_the_negative_threshold': (all_valid, [[0, 0, 10, 25]], [True], [False], {}, [-1, 0, 0, 1, 0]),
      # Two identical GTs: the positive step takes the first, the low-quality loop the last.
      'two_gts_share_best_anchor': (all_valid, [[5, 5, 15, 15], [5, 5, 15, 15]], [True, True], [False, False], {},
                                    [0, 2, 0, 0, 0]),
      'empty_image': (all_valid, np.zeros((0, 4)), np.zeros(0, bool), np.zeros(0, bool), {}, [0] * 5),
      'only_padded_gts': (all_valid, [[5, 5, 15, 15]], [False], [False], {}, [0] * 5),
      # Anchor 1 (the GT's twin) is invalid: the GT takes its best valid anchor (3, IoU 50/250) instead.
      'invalid_anchors': (np.array([True, False, True, True, False]), [[5, 5, 15, 15]], [True], [False], {},
                          [0, -1, 0, 1, -1]),
      # GT 1 is a crowd region: anchor 2 lies entirely in it (IoF 1 > 0.5) -> ignored; anchor 4 is outside.
      'crowd_gt': (all_valid, [[0, 0, 10, 10], [18, 18, 32, 32]], [True, True], [False, True],
                   dict(ignore_iof_thr=0.5), [1, 0, -1, 1, 0]),
      # mmdet's `>=` with min_pos_iou 0: a zero-area GT has IoU 0 with every anchor, so all become its.
      'zero_area_gt': (all_valid, [[0, 0, 10, 10], [33, 33, 33, 33]], [True, True], [False, False], {},
                       [2, 2, 2, 2, 2]),
  }
  valid, gt, gt_valid, ignore, kwargs, want = cases[name]
  return (valid, np.asarray(gt, np.float32).reshape(-1, 4), np.asarray(gt_valid, bool), np.asarray(ignore, bool),
          kwargs, want)


CASES = ['no_anchor_over_half', 'iou_on_the_negative_threshold', 'two_gts_share_best_anchor', 'empty_image',
         'only_padded_gts', 'invalid_anchors', 'crowd_gt', 'zero_area_gt']


@pytest.mark.parametrize('name', CASES)
def test_hand_made_cases(name):
  valid, gt, gt_valid, ignore, kwargs, want = _case(name)
  got = assign.max_iou_assign(ANCHORS, valid, gt, gt_valid, gt_ignore=ignore, **RETINA, **kwargs)
  assert got.dtype == np.int32 and got.tolist() == want


def test_first_best_anchor_only_and_vmap():
  gt = np.array([[2.5, 2.5, 12.5, 12.5]], np.float32)  # IoU 56.25/143.75 with anchors 0 and 1 alike
  both = assign.max_iou_assign(ANCHORS, np.ones(5, bool), gt, np.ones(1, bool), **RETINA)
  first = assign.max_iou_assign(ANCHORS, np.ones(5, bool), gt, np.ones(1, bool), **RETINA, gt_max_assign_all=False)
  assert both.tolist() == [1, 1, 0, 0, 0] and first.tolist() == [1, 0, 0, 0, 0]
  gts = np.stack([np.pad(gt, ((0, 1), (0, 0))), np.array([[5, 5, 15, 15], [20, 20, 30, 30]], np.float32)])
  batched = jax.jit(jax.vmap(lambda v, g, gv: assign.max_iou_assign(ANCHORS, v, g, gv, **RETINA)))(
      np.ones((2, 5), bool), gts, np.array([[True, False], [True, True]]))
  assert batched.tolist() == [[1, 1, 0, 0, 0], [0, 1, 2, 0, 0]]


def test_bad_shapes_raise_one_clear_error():
  with pytest.raises(ValueError, match='anchor_valid must be'):
    assign.max_iou_assign(ANCHORS, np.ones(4, bool), np.zeros((1, 4)), np.ones(1, bool), **RETINA)


def _mmdet_assign(anchors, valid, gt, gt_valid, ignore, kwargs):
  """mmdet on the valid anchors and real GTs only; the result in our coding (full-array GT indices)."""
  import torch  # pylint: disable=g-import-not-at-top
  from mmdet.models.task_modules.assigners import MaxIoUAssigner  # pylint: disable=g-import-not-at-top
  from mmengine.structures import InstanceData  # pylint: disable=g-import-not-at-top
  real, crowd = np.nonzero(gt_valid & ~ignore)[0], np.nonzero(gt_valid & ignore)[0]
  ref = MaxIoUAssigner(**RETINA, ignore_iof_thr=kwargs.get('ignore_iof_thr', -1))
  pred = InstanceData(priors=torch.from_numpy(anchors[valid]))
  gts = InstanceData(bboxes=torch.from_numpy(gt[real]), labels=torch.zeros(len(real), dtype=torch.long))
  ignored = InstanceData(bboxes=torch.from_numpy(gt[crowd])) if len(crowd) else None
  inds = ref.assign(pred, gts, ignored).gt_inds.numpy()
  out = np.full(len(anchors), -1)
  pos = inds > 0
  inds[pos] = real[inds[pos] - 1] + 1
  out[valid] = inds
  return out.tolist()


@pytest.mark.slow
@pytest.mark.parametrize('name', CASES)
def test_hand_made_cases_equal_mmdet(mmdet, name):
  del mmdet
  valid, gt, gt_valid, ignore, kwargs, want = _case(name)
  assert _mmdet_assign(ANCHORS, valid, gt, gt_valid, ignore, kwargs) == want


@pytest.mark.slow
def test_random_images_equal_mmdet(mmdet):
  del mmdet
  rng = np.random.default_rng(0)
  sizes = ((8, 12), (4, 6), (2, 3), (1, 2), (1, 1))
  anchors = np.concatenate(anchor_lib.grid_anchors(sizes))
  fn = jax.jit(assign.max_iou_assign,
               static_argnames=('pos_iou_thr', 'neg_iou_thr', 'min_pos_iou', 'ignore_iof_thr'))
  for trial in range(12):
    pad = np.array([[rng.integers(20, 65), rng.integers(20, 97)]])
    valid = np.concatenate(anchor_lib.valid_flags(sizes, anchor_lib.RETINANET_STRIDES, pad, 9), axis=1)[0]
    valid = np.asarray(valid)
    g = 12
    gt = random_boxes(rng, g, size=96, max_side=70)
    gt_valid = np.arange(g) < rng.integers(0 if trial == 0 else 1, g + 1)
    ignore = rng.random(g) < (0.3 if trial % 2 else 0.0)
    kwargs = dict(ignore_iof_thr=0.5) if trial % 3 else {}
    got = fn(anchors, valid, gt, gt_valid, gt_ignore=ignore, **RETINA, **kwargs)
    assert got.tolist() == _mmdet_assign(anchors, valid, gt, gt_valid, ignore, kwargs), trial
