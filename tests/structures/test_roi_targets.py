"""structures.roi_targets: a hand-computed case, no GT at all, errors; then mmdet 3.3.0's
BBoxHead.get_targets on the SamplingResult built from this package's chain (max_iou_assign with the rcnn
assigner -> add_gt_as_proposals -> random_sample), with padded GT and proposal rows. mmdet's sampler
draws cannot be reproduced, so its SamplingResult is built from the indices sampled here.
"""
import jax
import numpy as np
import pytest

from hatnet_jax.structures import assign
from hatnet_jax.structures import roi_targets
from hatnet_jax.structures import sampling

_targets = jax.jit(roi_targets.roi_box_targets, static_argnames=('num_classes',))


def test_by_hand():
  rois = np.array([[0, 0, 10, 10], [5, 5, 25, 15], [1, 1, 2, 2], [9, 9, 9, 9]], np.float32)
  gt = np.array([[2, 0, 12, 20], [0, 0, 1, 1]], np.float32)
  labels, lw, targets, bw = (np.asarray(x) for x in _targets(
      rois, np.array([True, False, False, False]), np.array([True, True, False, False]), gt, np.array([3, 1]),
      np.array([1, 0, 2, -1]), num_classes=5))
  assert labels.tolist() == [3, 5, 5, 5] and lw.tolist() == [1, 1, 0, 0]
  # RoI (5, 5) 10 x 10 onto GT (7, 10) 10 x 20: ((7 - 5) / 10, (10 - 5) / 10, log 1, log 2) / stds.
  np.testing.assert_allclose(targets[0], [0.2 / 0.1, 0.5 / 0.1, 0.0, np.log(2) / 0.2], rtol=1e-6)
  assert not targets[1:].any() and bw.tolist() == [[1] * 4] + [[0] * 4] * 3


def test_no_gt_and_errors():
  labels, lw, targets, bw = (np.asarray(x) for x in roi_targets.roi_box_targets(
      np.ones((3, 4)), np.array([True, False, False]), np.ones(3, bool), np.zeros((0, 4)), np.zeros(0, int),
      np.ones(3, int), num_classes=2))
  assert labels.tolist() == [2, 2, 2] and lw.tolist() == [1, 1, 1] and not targets.any() and not bw.any()
  with pytest.raises(ValueError, match=r'rois must be \[S, 4\] with is_positive, valid and assigned_gt \[S\]'):
    roi_targets.roi_box_targets(np.ones((3, 4)), np.ones(2, bool), np.ones(3, bool), np.ones((1, 4)), [0], [1] * 3, 2)
  with pytest.raises(ValueError, match='num_classes must be a static int >= 1'):
    roi_targets.roi_box_targets(np.ones((3, 4)), np.ones(3, bool), np.ones(3, bool), np.ones((1, 4)), [0], [1] * 3, 0)


def _scene(rng, real_gts=5, pad_gts=3, real_props=300, pad_props=40):
  gt_xy = rng.uniform(0, 150, (real_gts, 2))
  gt = np.concatenate([gt_xy, gt_xy + rng.uniform(15, 60, (real_gts, 2))], 1)
  gt = np.concatenate([gt, np.zeros((pad_gts, 4))]).astype(np.float32)
  # Proposals: jittered copies of the GTs (positives) and random boxes (mostly negatives), then padding.
  near = gt[rng.integers(0, real_gts, real_props // 2)] + rng.normal(0, 6, (real_props // 2, 4))
  xy = rng.uniform(0, 180, (real_props - real_props // 2, 2))
  far = np.concatenate([xy, xy + rng.uniform(4, 70, xy.shape)], 1)
  props = np.concatenate([near, far, np.zeros((pad_props, 4))]).astype(np.float32)
  props[:, 2:] = np.maximum(props[:, 2:], props[:, :2] + 1)
  return gt, props


def test_chain_equals_mmdet_get_targets(mmdet):
  import torch  # pylint: disable=g-import-not-at-top
  from mmdet.models.roi_heads.bbox_heads import BBoxHead  # pylint: disable=g-import-not-at-top
  from mmdet.models.task_modules.assigners import MaxIoUAssigner  # pylint: disable=g-import-not-at-top
  from mmdet.models.task_modules.samplers import SamplingResult  # pylint: disable=g-import-not-at-top
  from mmengine.config import ConfigDict  # pylint: disable=g-import-not-at-top
  from mmengine.structures import InstanceData  # pylint: disable=g-import-not-at-top
  del mmdet
  rng = np.random.default_rng(0)
  real_gts, pad_gts, real_props, pad_props, num_classes = 5, 3, 300, 40, 7
  gt, props = _scene(rng, real_gts, pad_gts, real_props, pad_props)
  gt_labels = rng.integers(0, num_classes, real_gts + pad_gts).astype(np.int32)
  gt_valid, prop_valid = np.arange(len(gt)) < real_gts, np.arange(len(props)) < real_props

  @jax.jit
  def chain(key):
    assigned = assign.max_iou_assign(props, prop_valid, gt, gt_valid, pos_iou_thr=0.5, neg_iou_thr=0.5,
                                     min_pos_iou=0.5)
    boxes, valid, cand = sampling.add_gt_as_proposals(props, prop_valid, assigned, gt, gt_valid)
    index, is_pos, ok = sampling.random_sample(key, cand, valid, 128, 0.25)
    return (assigned, index, is_pos, ok) + roi_targets.roi_box_targets(boxes[index], is_pos, ok, gt, gt_labels,
                                                                       cand[index], num_classes)

  assigned, index, is_pos, ok, labels, lw, targets, bw = (np.asarray(x) for x in chain(jax.random.PRNGKey(0)))
  n_pos, n = int(is_pos.sum()), int(ok.sum())
  assert 5 < n_pos <= 32 and n == 128  # a real mix, capped at 128 * 0.25 positives

  gt_t, props_t = torch.from_numpy(gt[:real_gts]), torch.from_numpy(props[:real_props])
  gt_instances = InstanceData(bboxes=gt_t, labels=torch.from_numpy(gt_labels[:real_gts]).long())
  result = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5, match_low_quality=True).assign(
      InstanceData(priors=props_t), gt_instances)
  np.testing.assert_array_equal(result.gt_inds.numpy(), assigned[:real_props])  # the assigner agrees
  result.add_gt_(gt_instances.labels)

  def to_mmdet(i):  # mmdet's priors: the real GTs, then the real proposals
    return torch.from_numpy(np.where(i < len(gt), i, i - pad_gts)).long()

  sample = SamplingResult(pos_inds=to_mmdet(index[:n_pos]), neg_inds=to_mmdet(index[n_pos:n]),
                          priors=torch.cat([gt_t, props_t]), gt_bboxes=gt_t, assign_result=result,
                          gt_flags=torch.cat([torch.ones(real_gts), torch.zeros(real_props)]).to(torch.uint8))
  head = BBoxHead(num_classes=num_classes, with_avg_pool=False, in_channels=4, roi_feat_size=1)
  want = head.get_targets([sample], ConfigDict(pos_weight=-1), concat=True)
  np.testing.assert_array_equal(labels[:n], want[0].numpy())
  np.testing.assert_array_equal(lw[:n], want[1].numpy())
  np.testing.assert_allclose(targets[:n], want[2].numpy(), rtol=1e-6, atol=1e-6)  # log and / differ by an ulp
  np.testing.assert_array_equal(bw[:n], want[3].numpy())
  assert (labels[n:] == num_classes).all() and not lw[n:].any() and not targets[n:].any() and not bw[n:].any()
