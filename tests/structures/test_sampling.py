"""structures.sampling: RandomSampler's semantics (counts, disjoint eligible picks, mmdet's output order,
neg_pos_ub, determinism per key, uniform subsets by a chi-square test with fixed keys), the GT boxes put in
front of the proposals, jit/vmap, errors; then mmdet 3.3.0's RandomSampler.sample with add_gt_as_proposals
where it has no random choice to make (num large enough to take every candidate): the same candidates in
the same order. mmdet's torch.randperm draws themselves cannot be reproduced.
"""
import functools
import itertools

import jax
import numpy as np
import pytest

from hatnet_jax.structures import sampling

KEY = jax.random.PRNGKey(0)


@functools.partial(jax.jit, static_argnames=('num', 'pos_fraction', 'neg_pos_ub'))
def _sample(key, assigned, valid, num, pos_fraction, neg_pos_ub=-1):
  return sampling.random_sample(key, assigned, valid, num, pos_fraction, neg_pos_ub)


def _candidates(rng, n=300, pos=50, neg=200, invalid=20):
  """assigned [n] (pos positives to GTs 0..4, neg negatives, the rest ignored) and valid [n], where
  `invalid` rows (positive, negative or ignored alike) are flagged off; all shuffled."""
  assigned = np.concatenate([rng.integers(1, 6, pos), np.zeros(neg, int), -np.ones(n - pos - neg, int)])
  valid = np.ones(n, bool)
  valid[rng.choice(n, invalid, replace=False)] = False
  order = rng.permutation(n)
  return assigned[order].astype(np.int32), valid[order]


def _check(assigned, valid, result, want_pos, want_neg):
  index, is_pos, ok = (np.asarray(x) for x in result)
  n_pos, n_neg = int(is_pos.sum()), int(ok.sum()) - int(is_pos.sum())
  assert (n_pos, n_neg) == (want_pos, want_neg)
  assert ok.tolist() == [True] * (n_pos + n_neg) + [False] * (len(ok) - n_pos - n_neg)
  assert is_pos.tolist() == [True] * n_pos + [False] * (len(ok) - n_pos)
  pos, neg = index[:n_pos], index[n_pos:n_pos + n_neg]
  assert (np.diff(pos) > 0).all() and (np.diff(neg) > 0).all()  # ascending: mmdet's unique() order
  assert valid[pos].all() and (assigned[pos] > 0).all() and valid[neg].all() and (assigned[neg] == 0).all()
  assert not index[n_pos + n_neg:].any()
  return pos, neg


def test_counts_order_and_eligibility():
  assigned, valid = _candidates(np.random.default_rng(0))
  eligible_pos = int((valid & (assigned > 0)).sum())
  _check(assigned, valid, _sample(KEY, assigned, valid, num=64, pos_fraction=0.25), 16, 48)
  # All 512 * 0.25 = 128 positives allowed: every eligible one is taken, negatives fill up to what exists.
  eligible_neg = int((valid & (assigned == 0)).sum())
  pos, neg = _check(assigned, valid, _sample(KEY, assigned, valid, num=512, pos_fraction=0.25),
                    eligible_pos, eligible_neg)
  assert set(pos) == set(np.flatnonzero(valid & (assigned > 0)))
  assert set(neg) == set(np.flatnonzero(valid & (assigned == 0)))
  # Few positives: negatives fill the rest of num.
  few = np.where(np.arange(len(assigned)) < 150, np.minimum(assigned, 0), assigned).astype(np.int32)
  few_pos = int((valid & (few > 0)).sum())
  _check(few, valid, _sample(KEY, few, valid, num=64, pos_fraction=0.5), few_pos, 64 - few_pos)


def test_neg_pos_ub_and_empty_cases():
  assigned, valid = _candidates(np.random.default_rng(1), n=100, pos=5, neg=80, invalid=0)
  _check(assigned, valid, _sample(KEY, assigned, valid, num=64, pos_fraction=0.25, neg_pos_ub=3), 5, 15)
  none = np.where(assigned > 0, -1, assigned).astype(np.int32)
  _check(none, valid, _sample(KEY, none, valid, num=64, pos_fraction=0.25, neg_pos_ub=3), 0, 3)  # max(1, 0) * 3
  _check(none, valid, _sample(KEY, none, valid, num=64, pos_fraction=0.25), 0, 64)
  _check(assigned, np.zeros(100, bool), _sample(KEY, assigned, np.zeros(100, bool), num=64, pos_fraction=0.25), 0, 0)
  small = np.array([1, 0, -1, 2, 0], np.int32)  # fewer candidates than num: padded slots
  index, is_pos, ok = (np.asarray(x) for x in _sample(KEY, small, np.ones(5, bool), num=8, pos_fraction=0.5))
  assert index.tolist() == [0, 3, 1, 4, 0, 0, 0, 0] and is_pos.tolist() == [True] * 2 + [False] * 6
  assert ok.tolist() == [True] * 4 + [False] * 4
  empty = sampling.random_sample(KEY, np.zeros(0, np.int32), np.zeros(0, bool), 4, 0.25)
  assert [x.shape for x in empty] == [(4,)] * 3 and not np.asarray(empty[2]).any()


def test_same_key_same_sample_other_key_other_sample():
  assigned, valid = _candidates(np.random.default_rng(2))
  a = _sample(KEY, assigned, valid, num=64, pos_fraction=0.25)
  b = _sample(KEY, assigned, valid, num=64, pos_fraction=0.25)
  c = _sample(jax.random.PRNGKey(1), assigned, valid, num=64, pos_fraction=0.25)
  assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], c[0])


def _chi2_pvalue(counts, expected):
  from scipy import stats  # pylint: disable=g-import-not-at-top
  return stats.chisquare(counts, expected).pvalue


def test_uniform_subsets_chi_square():
  """2 of 4 eligible positives and 3 of 5 eligible negatives: every subset equally likely (6 and 10
  subsets), over 3000 fixed keys; ineligible candidates never picked. Fails for a biased picker."""
  pytest.importorskip('scipy')
  assigned = np.array([1, 0, 2, -1, 0, 3, 0, 1, 0, 0, 2, 0], np.int32)
  valid = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 1], bool)  # positives 0, 2, 5, 7; negatives 1, 4, 6, 9, 11
  keys = jax.random.split(jax.random.PRNGKey(7), 3000)
  draws = jax.vmap(lambda k: sampling.random_sample(k, assigned, valid, 5, 0.4))(keys)
  index, is_pos, ok = (np.asarray(x) for x in draws)
  assert ok.all() and (is_pos.sum(1) == 2).all()
  pos_subsets = [tuple(r) for r in index[:, :2]]
  neg_subsets = [tuple(r) for r in index[:, 2:]]
  for subsets, members, k in ((pos_subsets, (0, 2, 5, 7), 2), (neg_subsets, (1, 4, 6, 9, 11), 3)):
    all_subsets = list(itertools.combinations(members, k))
    counts = [subsets.count(s) for s in all_subsets]
    assert sum(counts) == len(keys)  # nothing outside the eligible members
    assert _chi2_pvalue(counts, [len(keys) / len(all_subsets)] * len(all_subsets)) > 1e-3, counts
  # The statistic does detect bias: a picker preferring low indices fails it.
  biased = [pos_subsets.count(s) + (150 if s == (0, 2) else -30) for s in itertools.combinations((0, 2, 5, 7), 2)]
  assert _chi2_pvalue(biased, [500] * 6) < 1e-6


def test_add_gt_as_proposals_by_hand():
  proposals = np.array([[0, 0, 5, 5], [1, 1, 6, 6], [0, 0, 0, 0]], np.float32)
  gt = np.array([[2, 2, 8, 8], [0, 0, 0, 0]], np.float32)
  boxes, valid, assigned = sampling.add_gt_as_proposals(proposals, [True, True, False], [0, 1, -1], gt, [True, False])
  np.testing.assert_array_equal(boxes, np.concatenate([gt, proposals]))
  assert np.asarray(valid).tolist() == [True, False, True, True, False]
  assert np.asarray(assigned).tolist() == [1, -1, 0, 1, -1]
  with pytest.raises(ValueError, match=r'proposals must be \[P, 4\] with proposal_valid and assigned \[P\]'):
    sampling.add_gt_as_proposals(proposals, [True], [0, 1, -1], gt, [True, False])


def test_errors_name_the_input():
  with pytest.raises(ValueError, match=r'assigned and candidate_valid must both be \[N\]'):
    sampling.random_sample(KEY, np.zeros(5, np.int32), np.ones(4, bool), 4, 0.25)
  with pytest.raises(ValueError, match='num must be a static int >= 1, pos_fraction in'):
    sampling.random_sample(KEY, np.zeros(5, np.int32), np.ones(5, bool), 4, 1.5)


def test_takes_every_candidate_as_mmdet_random_sampler(mmdet):
  """mmdet with add_gt_as_proposals and num = every candidate makes no random choice: compare exactly."""
  import torch  # pylint: disable=g-import-not-at-top
  from mmdet.models.task_modules.assigners import AssignResult  # pylint: disable=g-import-not-at-top
  from mmdet.models.task_modules.samplers import RandomSampler  # pylint: disable=g-import-not-at-top
  from mmengine.structures import InstanceData  # pylint: disable=g-import-not-at-top
  del mmdet
  rng = np.random.default_rng(3)
  real_gts, pad_gts, real_props, pad_props = 4, 3, 40, 10
  assigned = np.concatenate([rng.choice([-1, 0, 0, 1, 2, 4], real_props), -np.ones(pad_props, int)]).astype(np.int32)
  props = rng.uniform(0, 50, (real_props + pad_props, 4)).astype(np.float32)
  gt = rng.uniform(0, 50, (real_gts + pad_gts, 4)).astype(np.float32)
  gt_labels = rng.integers(0, 3, real_gts + pad_gts)
  boxes, valid, cand = sampling.add_gt_as_proposals(props, np.arange(50) < real_props, assigned, gt,
                                                    np.arange(7) < real_gts)
  index, is_pos, ok = (np.asarray(x) for x in sampling.random_sample(KEY, cand, valid, 100, 1.0))
  g = torch.from_numpy(assigned[:real_props]).long()
  labels = torch.where(g > 0, torch.from_numpy(gt_labels)[(g - 1).clamp(min=0)], -1)
  result = AssignResult(real_gts, g, torch.zeros(real_props), labels)
  sampler = RandomSampler(num=real_gts + real_props, pos_fraction=1.0, add_gt_as_proposals=True)
  gt_instances = InstanceData(bboxes=torch.from_numpy(gt[:real_gts]), labels=torch.from_numpy(gt_labels[:real_gts]))
  want = sampler.sample(result, InstanceData(priors=torch.from_numpy(props[:real_props])), gt_instances)
  to_mmdet = lambda i: np.where(i < 7, i, i - pad_gts)  # pylint: disable=unnecessary-lambda-assignment
  n_pos = int(is_pos.sum())
  assert to_mmdet(index[:n_pos]).tolist() == want.pos_inds.tolist()
  assert to_mmdet(index[n_pos:ok.sum()]).tolist() == want.neg_inds.tolist()
  np.testing.assert_array_equal(boxes[index[:n_pos]], want.pos_priors.numpy())
  np.testing.assert_array_equal(cand[index[:n_pos]] - 1, want.pos_assigned_gt_inds.numpy())
  np.testing.assert_array_equal(gt_labels[cand[index[:n_pos]] - 1], want.pos_gt_labels.numpy())
