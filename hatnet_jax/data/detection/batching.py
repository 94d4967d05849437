"""Which images form each detection batch: canvas-homogeneous training batches, one exact eval pass.

Training (`TrainPlan`), a pure function of (seed, epoch), so a run resumes exactly from its step:
epoch ``e`` visits the training images in the order of `stream.stream_indices` (the stateless permutation
seeded by (seed, e) every pipeline uses). Walking that order, each image joins the bucket of its canvas
(`transforms.canvas_index`; with COCO's default canvases, landscape-or-square vs portrait: mmdet's
AspectRatioBatchSampler buckets, w >= h vs w < h), and a batch is formed each time a bucket holds
``batch_size`` images: the epoch's batches are in the order they fill, as AspectRatioBatchSampler yields
them. What is left in the buckets at the end of the epoch is dropped (mmdet mixes the leftovers into mixed
batches, which a fixed canvas per batch cannot hold): at most (number of canvases) x (batch - 1) images per
epoch, different ones each epoch. So every epoch has the same ``steps_per_epoch = sum over canvases of
floor(images of the canvas / batch)`` and global step ``k`` is batch ``k % steps_per_epoch`` of epoch
``k // steps_per_epoch``. mmdet samples each GPU's batch (2 images) separately; here the whole global batch
shares one canvas (static shapes).

Evaluation (`eval_plan`): every image of the split exactly once, grouped by canvas (in config order, records
in index order within a group), cut into batches of the eval batch size; a group's last batch is padded by
repeating its last image with mask 0.
"""
import collections
import logging

import numpy as np

from hatnet_jax.data import stream
from hatnet_jax.data.tf_host import tf

EvalBatch = collections.namedtuple('EvalBatch', 'indices mask canvas')


class TrainPlan:
  """The batches of the training stream. `eligible`: record indices trained on; `canvas_of`: canvas index of
  every record of the split; `batch`: the global batch size."""

  def __init__(self, eligible, canvas_of, num_canvases, batch, seed):
    self.eligible = np.asarray(eligible, np.int64)
    self.groups = np.asarray(canvas_of, np.int64)[self.eligible]
    self.num_canvases, self.batch, self.seed = int(num_canvases), int(batch), int(seed)
    counts = np.bincount(self.groups, minlength=self.num_canvases)
    self.steps_per_epoch = int(np.sum(counts // self.batch))
    for c, n in enumerate(counts.tolist()):
      if 0 < n < self.batch:
        logging.warning('Detection training: only %d images use canvas %d, fewer than the batch (%d): they '
                        'are never trained on', n, c, self.batch)
    if self.steps_per_epoch == 0:
      raise ValueError(f'No canvas holds a full batch of {self.batch} training images (images per canvas: '
                       f'{counts.tolist()}); lower config.batch_size or merge config.data.canvases')
    self._tensors = None

  def _constants(self):
    if self._tensors is None:
      with tf.init_scope():
        self._tensors = (tf.constant(self.eligible), tf.constant(self.groups))
    return self._tensors

  def epoch_batches(self, epoch):
    """TF: (indices int64 [S, B] record indices, canvas int32 [S]) of one epoch's batches, in order."""
    eligible, groups = self._constants()
    n = len(self.eligible)
    epoch = tf.cast(epoch, tf.int64)
    perm = stream.stream_indices(epoch * n + tf.range(n, dtype=tf.int64), n, self.seed)
    rec, grp = tf.gather(eligible, perm), tf.gather(groups, perm)
    chunks, ready, canvas = [], [], []
    for c in range(self.num_canvases):
      where = tf.where(tf.equal(grp, c))[:, 0]  # positions in the epoch's order
      full = (tf.size(where, out_type=tf.int64) // self.batch) * self.batch
      pos = tf.reshape(where[:full], [-1, self.batch])
      chunks.append(tf.gather(rec, pos))
      ready.append(pos[:, -1])  # a batch is formed when its last image arrives
      canvas.append(tf.fill([tf.shape(pos)[0]], tf.constant(c, tf.int32)))
    order = tf.argsort(tf.concat(ready, 0), stable=True)
    indices = tf.gather(tf.concat(chunks, 0), order)
    indices.set_shape([self.steps_per_epoch, self.batch])
    return indices, tf.gather(tf.concat(canvas, 0), order)

  def dataset(self, start_step, num_steps):
    """tf.data of (step int64, indices int64 [B], canvas int32), steps start_step .. start_step + num_steps - 1."""
    s = self.steps_per_epoch
    first_epoch = start_step // s

    def one_epoch(e):
      idx, canvas = self.epoch_batches(e)
      return tf.data.Dataset.from_tensor_slices((e * s + tf.range(s, dtype=tf.int64), idx, canvas))
    ds = tf.data.Dataset.range(first_epoch, stream.INF_STEPS).flat_map(one_epoch)
    return ds.skip(start_step - first_epoch * s).take(num_steps)

  def batches(self, start_step, num_steps):
    """Eager: [(indices [B], canvas)] of the given steps (tests, error messages)."""
    return [(i, int(c)) for _, i, c in self.dataset(start_step, num_steps).as_numpy_iterator()]


def eval_plan(canvas_of, global_batch):
  """[EvalBatch(indices int64 [B], mask bool [B], canvas int)]: every record once, grouped by canvas."""
  canvas_of = np.asarray(canvas_of, np.int64)
  plan = []
  for c in sorted(set(canvas_of.tolist())):
    members = np.nonzero(canvas_of == c)[0].astype(np.int64)
    for start in range(0, len(members), global_batch):
      chunk = members[start:start + global_batch]
      idx = np.concatenate([chunk, np.full([global_batch - len(chunk)], chunk[-1], np.int64)])
      plan.append(EvalBatch(idx, np.arange(global_batch) < len(chunk), int(c)))
  return plan
