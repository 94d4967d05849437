"""Train and eval iterators: index-based tf.data on the host, global jax.Arrays on the devices.

Design (measured on this repo's benchmarks/input_pipeline.py; see docs/classification.md, "Input pipeline"):

* **Index-based sampling, state = the step.** The training stream is a fixed function of
  (config.seed, position): global batch ``k`` holds stream positions ``k*B .. k*B+B-1``; position ``p``
  is example ``shuffle_epoch(p // N)[(p % N) // R]`` of the split (N examples, R = repeated_aug, the
  epoch permutation is `RandomIndexShuffle` seeded by (seed, epoch), a stateless bijection computed per
  index, no table), and its augmentation randomness is derived from (seed, p). Nothing else is state:
  ``create_train_iterator(config, mesh, start_step=k)`` yields exactly what an uninterrupted iterator
  yields from step k on, so the checkpoint stores only the step. (A checkpointed tf.data iterator
  stores its shuffle buffer: measured 76 MB for 1,024 buffered ~74 KB JPEG records, i.e. ~1.2 GB per
  host for a 16,384-record buffer, per checkpoint, and restores only onto the same process layout.)
  The global batch does not depend on the number of processes or devices either.
  This needs random access: TFDS array_record data sources (ImageNet, other TFDS datasets, digits),
  file paths (image folders) or memory (config.data.cache).
* **tf.data for the work that must stay on the host**: each process reads only its rows of every global
  batch, looks records up in chunks, and runs decode + RandomResizedCrop (fused with JPEG decoding) in
  C++ threads (no GIL, no worker processes); the crop's resize runs there too, or with
  ``data.device_resize`` (the default) on the device (`crop_resize.py`). Flip, RandAugment,
  normalisation and random erasing run on the device in JAX (`augment.py`): a first prototype doing
  all of it on the host in TF ops ran at 54-62 images per CPU-second at 224, the host part with the
  resize at ~190-240, without it at ~470; and the host ships uint8 (a 512 x 512 canvas is 786 KB per
  image, a resized 224 x 224 crop 150 KB) instead of float32.
* **Corrupt images** (training): an example that fails to decode is replaced by a deterministic random
  other example of the split (up to 7 tries; then the run stops with an error), so batches keep their
  size and composition stays a function of (seed, step). Each replacement counts in
  ``num_skipped``. The iterator starts on a plain parallel map and switches to the replacing pipeline
  (per-example tf.data datasets, ~0.7 ms per image of host CPU here) at the first batch with an
  undecodable image, from that batch on: the same batches as replacing from the start. Evaluation never
  skips: a decode error raises.
* **Exact evaluation**: ceil(N / B) global batches; position p >= N is padding (mask 0, it repeats the
  last example). Each process takes its rows of each batch, so every example is seen exactly once over
  all processes and devices.
* Batches become global arrays with `jax.make_array_from_process_local_data`, sharded
  ``NamedSharding(mesh, P('data'))``; a background thread keeps ``config.data.prefetch`` batches on the
  devices.
"""
import functools
import logging
import math

import numpy as np

import jax

from hatnet_jax import layout
from hatnet_jax.data.classification import augment as augment_lib
from hatnet_jax.data.classification import sources
from hatnet_jax.data import stream
from hatnet_jax.data.classification import transforms

from hatnet_jax.data.tf_host import tf

MAX_TRIES = 8  # 1 + up to 7 replacements per position
_SALT_CROP = 0xC409
_SALT_REPLACE = 0x2E91




# ------------------------------------------------------------------------------------------------
# tf.data graphs (also used directly by the tests with explicit rows / sources)
# ------------------------------------------------------------------------------------------------


def train_canvas(d, image_shape=(None, None, 3)) -> int:
  """Side of the canvases the crops travel in (0: resized on the host): ``d.device_resize``, or less
  when the dataset declares a fixed image size (every crop of a 32x32 dataset fits a 32x32 canvas)."""
  canvas = int(d.get('device_resize', 0) or 0)
  if canvas and None not in image_shape[:2]:
    canvas = min(canvas, max(int(image_shape[0]), int(image_shape[1]), int(d.image_size)))
  return canvas


def train_dataset(src, d, seed, global_batch, lo, hi, start_step=0, num_steps=stream.INF_STEPS,
                  threads=None, robust=None, canvas=None):
  """Per-process host dataset of training batches: dict(image uint8, extent int32 [n, 2], label int32,
  skipped int32); image is [n, S, S, 3], or [n, C, C, 3] canvases with ``data.device_resize = C``
  (`transforms.TrainCrop`; canvas: C, default `train_canvas(d)`).

  robust (default config.data.skip_corrupt): replace undecodable images (per-example datasets: ~0.7 ms
  of host CPU per image here; `TrainIterator` switches to it at the first undecodable image); False: a
  plain parallel map, where a decode error stops the pipeline.
  """
  crop = transforms.TrainCrop(d, train_canvas(d) if canvas is None else canvas)
  n_local = hi - lo
  num = len(src)
  repeats = max(1, int(d.repeated_aug))
  ds = stream.position_dataset(start_step, num_steps, global_batch, lo, hi)
  ds = ds.map(lambda p: (p, stream.stream_indices(p, num, seed, repeats)))
  ds = stream.fetch(ds, src, max(1, min(64, n_local)))
  crop_seed = tf.constant(seed * 1_000_003 + _SALT_CROP, tf.int64)
  replace_seed = tf.constant(seed * 1_000_003 + _SALT_REPLACE, tf.int64)

  def crop_attempt(pos, data, label, a):
    image, extent = crop(data, tf.stack([crop_seed, pos * MAX_TRIES + a]))
    return image, extent, label, tf.cast(a, tf.int32)

  def replacement(pos, a):
    u = tf.random.stateless_uniform([], tf.stack([replace_seed, pos * MAX_TRIES + a]))
    ridx = tf.minimum(tf.cast(tf.floor(u * num), tf.int64), num - 1)
    data, label = src.lookup(ridx[None])
    return data[0], label[0], a

  if robust is None:
    robust = bool(d.get('skip_corrupt', True))

  def robust_example(pos, idx, data, label):
    del idx
    # Try the example itself, then up to MAX_TRIES - 1 deterministic random replacements. The
    # replacements' lookups sit behind `concatenate`, so they are only set up when needed.
    first = tf.data.Dataset.from_tensors((data, label, tf.constant(0, tf.int64)))
    others = tf.data.Dataset.range(1, MAX_TRIES).map(lambda a: replacement(pos, a))
    tries = first.concatenate(others).map(lambda d, l, a: crop_attempt(pos, d, l, a))
    tries = tries.ignore_errors()
    def fail(_):
      check = tf.debugging.Assert(False, ['All tries to decode an image failed at stream position',
                                          pos, '(the data looks broken).'])
      with tf.control_dependencies([check]):
        return (tf.zeros([crop.size, crop.size, 3], tf.uint8), tf.constant([crop.size] * 2, tf.int32),
                tf.constant(0, tf.int32), tf.constant(-1))
    failed = tf.data.Dataset.range(1).map(fail)
    return tries.concatenate(failed).take(1)

  if robust:
    ds = ds.interleave(robust_example, cycle_length=tf.data.AUTOTUNE, block_length=1,
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  else:
    ds = ds.map(lambda pos, idx, data, label: crop_attempt(pos, data, label, tf.constant(0, tf.int64)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  # Crops of different sizes (device_resize) land in the top-left corners of zeroed canvases.
  ds = ds.padded_batch(n_local, padded_shapes=(crop.shape, [2], [], []), drop_remainder=True)
  ds = ds.map(lambda img, extent, lab, a: dict(image=img, extent=extent, label=lab, skipped=a))
  return ds.prefetch(2).with_options(stream.options(d, threads))


def eval_dataset(src, d, global_batch, lo, hi, threads=None):
  """Per-process host dataset of one eval pass: dict(image uint8, label int32, mask bool)."""
  crop = transforms.EvalCrop(d)
  num = len(src)
  num_batches = math.ceil(num / global_batch)
  ds = stream.position_dataset(0, num_batches, global_batch, lo, hi)
  ds = ds.map(lambda p: (p, tf.minimum(p, num - 1)))
  ds = stream.fetch(ds, src, max(1, min(64, hi - lo)))
  ds = ds.map(lambda p, i, data, label: dict(image=crop(data), label=label, mask=p < num),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(hi - lo, drop_remainder=True)
  return ds.prefetch(2).with_options(stream.options(d, threads))


# ------------------------------------------------------------------------------------------------
# Iterators of global jax.Arrays
# ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _augment_fn(aug_cfg, sharding):
  return jax.jit(lambda images, seed, step, extents=None: augment_lib.augment_batch(
      images, seed, step, aug_cfg, extents), out_shardings=sharding)


@functools.lru_cache(maxsize=16)
def _normalize_fn(mean, std, sharding):
  return jax.jit(lambda x: augment_lib.normalize(x, mean, std), out_shardings=sharding)


class TrainIterator(stream.GlobalBatches):
  """Iterator of global training batches dict(image f32 [B,S,S,3], label int32 [B]).

  Attributes: `step` (the step of the next batch), `num_skipped` (corrupt images replaced so far in
  the batches this process has yielded), `get_state()` -> {'step': step}.
  """

  def __init__(self, make_host, sharding, global_batch, image_size, seed, aug_cfg, start_step, prefetch,
               name_failures=None, device_resize=0, replace_corrupt=True):
    # make_host(start_step, robust) -> the host tf.data pipeline. It starts without the corrupt-image
    # replacement (a plain parallel map; the replacement's per-example datasets cost ~0.7 of ~2.6 ms per
    # image on the host); at the first undecodable image it restarts, replacing, from that batch: the
    # stream is a function of (seed, step), so the batches are the ones the replacing pipeline gives.
    self._make_host = make_host
    self._replace_corrupt = bool(replace_corrupt)
    self.replacing = False  # True once the replacing pipeline runs
    self._name_failures = name_failures  # (step, local rows) -> names of the examples that failed
    self._global_batch = global_batch
    side = int(device_resize) or image_size  # canvases: the crops are resized on the device
    self._image_shape = (global_batch, side, side, 3)
    self._resize = bool(device_resize)
    self.step = int(start_step)
    self._produced_step = int(start_step)
    self.num_skipped = 0
    self._seed = int(seed)
    self._augment = _augment_fn(aug_cfg, sharding)
    super().__init__(make_host(start_step, False), sharding, prefetch)

  def _next_local(self):
    try:
      return next(self._np_iter)
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError):
      if not self._replace_corrupt or self.replacing:
        raise
    logging.info('An image of training batch %d does not decode; from that batch on, the input pipeline '
                 'replaces undecodable images.', self._produced_step)
    self.replacing = True
    self._np_iter = self._make_host(self._produced_step, True).as_numpy_iterator()
    return next(self._np_iter)

  def _produce(self):
    local = self._next_local()
    images = self._global(local['image'], self._image_shape)
    labels = self._global(local['label'], (self._global_batch,))
    extents = self._global(local['extent'], (self._global_batch, 2)) if self._resize else None
    step = self._produced_step
    self._produced_step += 1
    images = self._augment(images, np.uint32(self._seed & 0xFFFFFFFF), np.int32(step), extents)
    failed_rows = np.nonzero(local['skipped'] > 0)[0]
    names = self._name_failures(step, failed_rows) if self._name_failures and failed_rows.size else []
    return dict(image=images, label=labels), (int(local['skipped'].sum()), names)

  def __next__(self):
    batch, (skipped, names) = self._prefetcher.get()
    self.num_skipped += skipped
    if skipped:
      logging.warning('Replaced %d undecodable training image(s) at step %d (%d so far in this run): %s',
                      skipped, self.step, self.num_skipped, '; '.join(names) or '(names not available)')
    self.step += 1
    return batch

  def get_state(self):
    return {'step': self.step}


def undecodable_examples(src, global_batch, batch_index, rows, indices=None) -> list[str]:
  """Names (`src.describe`) of the examples of one batch (this process's rows) that fail to decode."""
  if src is None:
    return []
  lo, hi = rows
  if indices is None:
    positions = np.arange(batch_index * global_batch + lo, batch_index * global_batch + hi)
    indices = np.minimum(positions, len(src) - 1)
  bad = []
  for index in sorted(set(int(i) for i in indices)):
    data, _ = src.lookup(tf.constant([index], tf.int64))
    try:
      transforms.decode_image(data[0])
    except tf.errors.InvalidArgumentError:
      bad.append(src.describe(index))
  return bad


class EvalIterator(stream.GlobalBatches):
  """One pass over the eval split: dict(image f32, label int32, mask f32) global batches."""

  def __init__(self, host_ds, sharding, global_batch, image_size, mean, std, num_batches, prefetch,
               src=None, rows=(0, 0)):
    self._src, self._rows, self._batch_index = src, rows, 0
    self._sharding = sharding
    self._global_batch = global_batch
    self._image_shape = (global_batch, image_size, image_size, 3)
    self.num_batches = num_batches
    self._normalize = _normalize_fn(tuple(mean), tuple(std), sharding)
    super().__init__(host_ds, sharding, prefetch)

  def _produce(self):
    try:
      local = next(self._np_iter)
    except tf.errors.InvalidArgumentError as e:
      bad = undecodable_examples(self._src, self._global_batch, self._batch_index, self._rows)
      names = '\n  '.join(bad) if bad else f'(not found again; TensorFlow said: {e.message})'
      raise stream.CorruptImageError(f'Evaluation stopped: {len(bad) or "an"} image(s) of the eval split '
                              f'{getattr(self._src, "split", "?")!r} could not be decoded (evaluation never '
                              f'skips examples; fix or remove them):\n  {names}') from None
    self._batch_index += 1
    make = self._global
    images = self._normalize(make(local['image'], self._image_shape))
    return dict(image=images, label=make(local['label'], (self._global_batch,)),
                mask=make(local['mask'].astype(np.float32), (self._global_batch,)))

  def __len__(self):
    return self.num_batches


def create_train_iterator(config, mesh, start_step=0):
  d = config.data
  info = sources.dataset_info(d)
  src = sources.open_split(d, info.train_split)
  sharding, lo, hi = layout.batch_rows(mesh, config.batch_size)
  canvas = train_canvas(d, info.image_shape)
  if canvas:
    logging.info('Training crops travel unresized in %dx%d canvases and are resized to %d on the devices '
                 '(config.data.device_resize=%d).', canvas, canvas, int(d.image_size), int(d.device_resize))

  def make_host(first_step, robust):
    return train_dataset(src, d, int(config.seed), int(config.batch_size), lo, hi, first_step, canvas=canvas,
                         robust=robust)

  repeats = max(1, int(d.repeated_aug))

  def name_failures(step, rows):
    positions = step * int(config.batch_size) + lo + np.asarray(rows, np.int64)
    indices = stream.stream_indices(tf.constant(positions), len(src), int(config.seed), repeats).numpy()
    return [src.describe(i) for i in indices]

  return TrainIterator(make_host, sharding, int(config.batch_size), int(d.image_size), int(config.seed),
                       augment_lib.AugmentConfig.from_data_config(d), start_step, int(d.prefetch),
                       name_failures=name_failures, device_resize=canvas,
                       replace_corrupt=bool(d.get('skip_corrupt', True)))


def create_eval_iterator(config, mesh):
  d = config.data
  batch = stream.eval_batch_size(config)
  info = sources.dataset_info(d)
  src = sources.open_split(d, info.eval_split)
  sharding, lo, hi = layout.batch_rows(mesh, batch, what='config.data.eval_batch_size (0: batch_size)')
  host = eval_dataset(src, d, batch, lo, hi)
  return EvalIterator(host, sharding, batch, int(d.image_size), tuple(d.mean), tuple(d.std),
                      math.ceil(len(src) / batch), int(d.prefetch), src=src, rows=(lo, hi))
