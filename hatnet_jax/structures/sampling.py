"""mmdetection 3.3.0's RandomSampler with static shapes: which RoIs (or anchors) the heads train on.

Mask R-CNN's samplers: rcnn num 512, pos_fraction 0.25, add_gt_as_proposals True; rpn num 256,
pos_fraction 0.5 over the anchors (their valid flags as candidate_valid), add_gt_as_proposals False; both
neg_pos_ub -1. One function serves both; its cost is a random permutation, two top_k and one sort of
the candidates.

mmdet order of operations, kept here: the assigner runs on the proposals alone; then the sampler puts the
GT boxes IN FRONT of the proposals, each assigned to itself (`AssignResult.add_gt_`), so a GT box is a
positive candidate even where no proposal matches it, and it does not take part in the assigner's
low-quality matching. `add_gt_as_proposals` does that prepending; call it between the assigner and
`random_sample`.

mmdet's torch.randperm draws cannot be reproduced; the semantics are: at most int(num * pos_fraction)
positives chosen uniformly at random without replacement (up to ties of 31-bit random priorities), then negatives uniformly to fill num (capped at
neg_pos_ub * max(1, #positives) when neg_pos_ub >= 0), fewer when there are not enough. Output order is
mmdet's SamplingResult order: the positives by ascending candidate index (mmdet's `.unique()` sorts), then
the negatives by ascending index, then the unused (invalid) slots.
"""
import jax
import jax.numpy as jnp
from jax import lax

from hatnet_jax.structures import boxes as box_ops


def add_gt_as_proposals(proposals: jax.Array, proposal_valid: jax.Array, assigned: jax.Array,
                        gt_boxes: jax.Array, gt_valid: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The GT boxes prepended to the proposals (mmdet `add_gt_as_proposals=True`), for ONE image.

  Args: proposals [P, 4], proposal_valid [P], assigned [P] int32 (structures/assign.py's format, from
  assigning the proposals alone), gt_boxes [G, 4] and gt_valid [G] (padded rows False).
  Returns (boxes [G + P, 4], valid [G + P], assigned [G + P]): row g < G is GT g, assigned g + 1 when
  gt_valid[g] (positive to itself), else invalid and -1; rows G.. are the proposals unchanged.
  """
  proposals, gt_boxes = box_ops.as_boxes('proposals', proposals), box_ops.as_boxes('gt_boxes', gt_boxes)
  proposal_valid, gt_valid = jnp.asarray(proposal_valid).astype(bool), jnp.asarray(gt_valid).astype(bool)
  assigned = jnp.asarray(assigned, jnp.int32)
  if proposals.ndim != 2 or proposal_valid.shape != proposals.shape[:1] or assigned.shape != proposals.shape[:1]:
    raise ValueError(f'proposals must be [P, 4] with proposal_valid and assigned [P]: got {proposals.shape}, '
                     f'{proposal_valid.shape} and {assigned.shape} (one image: vmap for a batch)')
  if gt_boxes.ndim != 2 or gt_valid.shape != gt_boxes.shape[:1]:
    raise ValueError(f'gt_boxes must be [G, 4] and gt_valid [G]: got {gt_boxes.shape} and {gt_valid.shape}')
  gt_assigned = jnp.where(gt_valid, jnp.arange(1, gt_boxes.shape[0] + 1, dtype=jnp.int32), -1)
  return (jnp.concatenate([gt_boxes, proposals]), jnp.concatenate([gt_valid, proposal_valid]),
          jnp.concatenate([gt_assigned, assigned]))


def _draw(eligible, priority, k, count):
  """[min(k, N)] int32: the indices of the `count` (traced, <= k static) eligible candidates of highest
  priority in ascending order, then N for each unused slot."""
  n = eligible.shape[0]
  _, order = lax.top_k(jnp.where(eligible, priority, -1), min(k, n))
  chosen = eligible[order] & (jnp.arange(order.shape[0]) < count)
  return jnp.sort(jnp.where(chosen, order, n)).astype(jnp.int32)


def random_sample(key: jax.Array, assigned: jax.Array, candidate_valid: jax.Array, num: int, pos_fraction: float,
                  neg_pos_ub: int = -1) -> tuple[jax.Array, jax.Array, jax.Array]:
  """A random sample of at most `num` candidates of ONE image (vmap for a batch; fold (seed, step) and the
  image into `key`).

  Args:
    key: a jax PRNG key; the same key gives the same sample.
    assigned: [N] int32, 0 negative, -1 ignored, g + 1 positive (structures/assign.py's format).
    candidate_valid: [N] bool; False candidates are never picked (nor are ignored ones).
    num, pos_fraction, neg_pos_ub: mmdet's sampler settings (static).
  Returns:
    (indices [num] int32 into the candidates, is_positive [num] bool, valid [num] bool): the positives by
    ascending index, then the negatives by ascending index, then unused slots (index 0, valid False).
  """
  assigned = jnp.asarray(assigned)
  candidate_valid = jnp.asarray(candidate_valid).astype(bool)
  if assigned.ndim != 1 or candidate_valid.shape != assigned.shape:
    raise ValueError(f'assigned and candidate_valid must both be [N] (one image: vmap for a batch), got '
                     f'{assigned.shape} and {candidate_valid.shape}')
  if not isinstance(num, int) or num < 1 or not 0 <= pos_fraction <= 1 or not isinstance(neg_pos_ub, int):
    raise ValueError(f'num must be a static int >= 1, pos_fraction in [0, 1], neg_pos_ub an int: got {num!r}, '
                     f'{pos_fraction!r}, {neg_pos_ub!r}')
  n = assigned.shape[0]
  if n == 0:
    return jnp.zeros((num,), jnp.int32), jnp.zeros((num,), bool), jnp.zeros((num,), bool)
  # Each candidate draws a random 31-bit priority; the highest eligible ones are taken: a uniform draw
  # without replacement up to ties of priorities (~N^2 / 2^32 pairs: ~14 among 243k anchors, each broken
  # by index). Ranks from jax.random.permutation would remove those ties at 3.5x the cost (~340 against
  # ~95 ms for 243k candidates on a loaded 2-core CPU). Positives and negatives are disjoint, so their
  # draws are independent.
  priority = (jax.random.bits(key, (n,), jnp.uint32) >> 1).astype(jnp.int32)
  positive = candidate_valid & (assigned > 0)
  negative = candidate_valid & (assigned == 0)
  max_pos = int(num * pos_fraction)
  num_pos = jnp.minimum(jnp.sum(positive, dtype=jnp.int32), max_pos)
  num_neg = num - num_pos
  if neg_pos_ub >= 0:
    num_neg = jnp.minimum(num_neg, neg_pos_ub * jnp.maximum(num_pos, 1))
  num_neg = jnp.minimum(num_neg, jnp.sum(negative, dtype=jnp.int32))
  neg = _draw(negative, priority, num, num_neg)
  # mmdet's SamplingResult order: the positives, then the negatives, each by ascending index; then unused.
  slot = jnp.arange(num)
  index = neg[jnp.clip(slot - num_pos, 0, neg.shape[0] - 1)]
  if max_pos > 0:
    pos = _draw(positive, priority, max_pos, num_pos)
    index = jnp.where(slot < num_pos, pos[jnp.minimum(slot, pos.shape[0] - 1)], index)
  is_positive = slot < num_pos
  valid = slot < num_pos + num_neg
  return jnp.where(valid, index, 0), is_positive, valid
