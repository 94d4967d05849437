"""The host side every task's input pipeline shares: the index stream, tf.data options, record look-ups,
and `GlobalBatches`, which turns a process's rows of each batch into global jax.Arrays ahead of time.

The design (the classification pipeline's docstring, `data/classification/pipeline.py`, has the measured
reasons): the training stream is a fixed function of (config.seed, position): global batch ``k`` holds
stream positions ``k*B .. k*B+B-1``, position ``p`` is example ``shuffle_epoch(p // N)[(p % N) // R]``
(`stream_indices`: a stateless per-index permutation seeded by (seed, epoch)), and a task derives its
augmentation randomness from (seed, p). A checkpoint therefore stores only the step. Evaluation is
ceil(N / B) global batches with padding rows masked out, each process taking its rows of each batch.
"""
import queue
import threading

import jax
import jax.numpy as jnp

from hatnet_jax.data.tf_host import tf

_SALT_SHUFFLE = 0x5EED
INF_STEPS = 2 ** 40


def stream_indices(positions, num_examples, seed, repeats=1):
  """Example index of each stream position (int64 tensor): per-epoch permutation, R repeats."""
  n = tf.constant(num_examples, tf.int64)
  epoch = positions // n
  slot = (positions % n) // repeats
  seeds = tf.stack([tf.fill(tf.shape(epoch), tf.constant(seed, tf.int64)), epoch,
                    tf.fill(tf.shape(epoch), tf.constant(_SALT_SHUFFLE, tf.int64))], axis=-1)
  return tf.raw_ops.RandomIndexShuffle(index=slot, seed=seeds, max_index=n - 1, rounds=4)


def options(d, threads=None):
  opts = tf.data.Options()
  opts.deterministic = True
  threads = threads if threads is not None else int(d.get('threads', 0) or 0)
  if threads > 0:
    opts.threading.private_threadpool_size = threads
  opts.threading.max_intra_op_parallelism = 1
  opts.autotune.enabled = True
  return opts


def position_dataset(first_step, num_steps, global_batch, lo, hi):
  steps = tf.data.Dataset.range(first_step, first_step + num_steps)
  n = hi - lo
  return steps.map(lambda k: k * global_batch + lo + tf.range(n, dtype=tf.int64)).unbatch()


def fetch(ds, src, chunk):
  """(pos, idx, ...) -> (pos, idx, ..., data, label), looking records up `chunk` at a time."""
  def lookup(*xs):
    data, label = src.lookup(xs[1])
    return xs + (data, label)
  return ds.batch(chunk).map(lookup, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


class Prefetcher:
  """Runs `produce()` (-> item or StopIteration) in a thread, keeping up to `size` items ready."""

  def __init__(self, produce, size):
    self._produce = produce
    self._size = max(0, int(size))
    self._queue = queue.Queue(maxsize=max(1, self._size))
    self._stop = threading.Event()
    self._thread = None
    if self._size > 0:
      self._thread = threading.Thread(target=self._run, daemon=True, name='hatnet-data-prefetch')
      self._thread.start()

  def _run(self):
    while not self._stop.is_set():
      try:
        item = ('ok', self._produce())
      except StopIteration:
        item = ('stop', None)
      except Exception as e:  # pylint: disable=broad-except
        item = ('error', e)
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if item[0] != 'ok':
        return

  def get(self):
    if self._thread is None:
      return self._produce()
    kind, value = self._queue.get()
    if kind == 'stop':
      self._queue.put((kind, value))
      raise StopIteration
    if kind == 'error':
      self._queue.put((kind, value))
      raise value
    return value

  def close(self):
    """Stops the thread and waits for it (bounded), so no producer is left inside TensorFlow at exit."""
    self._stop.set()
    if self._thread is not None:
      while self._thread.is_alive():
        try:  # unblock a producer waiting for room in the queue
          self._queue.get_nowait()
        except queue.Empty:
          pass
        self._thread.join(timeout=0.1)


class GlobalBatches:
  """Base of the iterators: a host tf.data pipeline's numpy batches (this process's rows) become global
  jax.Arrays in `_produce`, run ahead by `prefetch` batches in a thread. Subclasses set their fields,
  then call `super().__init__` last (the thread starts producing at once)."""

  def __init__(self, host_ds, sharding, prefetch):
    self._np_iter = host_ds.as_numpy_iterator()
    self._sharding = sharding
    self._prefetcher = Prefetcher(self._produce, prefetch)

  def _produce(self):
    raise NotImplementedError

  def _global(self, local, shape):
    """One global array of `shape` from this process's rows."""
    return jax.make_array_from_process_local_data(self._sharding, local, shape)

  def __iter__(self):
    return self

  def __next__(self):
    return self._prefetcher.get()

  def close(self):
    self._prefetcher.close()


class CorruptImageError(ValueError):
  """An image that evaluation needs could not be decoded; the message names the file(s)."""


def eval_batch_size(config):
  return int(config.data.get('eval_batch_size', 0) or 0) or int(config.batch_size)


def normalize_pad(images, valid_hw, mean, std):
  """On the device: uint8 [B, H, W, 3] -> (x / 255 - mean) / std in float32, 0 outside each image's valid
  (h, w) `valid_hw` [B, 2] (mmseg's and mmdet's Normalize, then Pad with 0)."""
  x = (images.astype(jnp.float32) / 255.0 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  h = jnp.arange(images.shape[1])[None, :, None]
  w = jnp.arange(images.shape[2])[None, None, :]
  inside = (h < valid_hw[:, 0, None, None]) & (w < valid_hw[:, 1, None, None])
  return jnp.where(inside[..., None], x, 0.0)
