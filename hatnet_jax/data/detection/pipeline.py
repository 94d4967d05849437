"""Detection train / eval iterators (RetinaNet 1x on COCO, mmdet 3.3.0 / PVT), static shapes throughout.

    train_it = det_pipeline.create_train_iterator(config, mesh, start_step=0)
    batch = next(train_it)
    for batch in det_pipeline.create_eval_iterator(config, mesh): ...

Every batch is a dict of global jax.Arrays sharded along the batch over the mesh's 'data' axis (B = global
batch, M = config.data.max_boxes, (Hc, Wc) = the batch's canvas), exactly these keys:
  image       float32 [B, Hc, Wc, 3] normalised, 0 beyond the resized image
  boxes       float32 [B, M, 4] xyxy in the resized (and flipped) image's pixels, 0 for padding rows
  labels      int32 [B, M] 0..K-1, -1 for padding rows
  box_valid   bool [B, M] a real, non-crowd object (a training target)
  crowd       bool [B, M] a crowd object (box kept, box_valid False)
  image_size  int32 [B, 2] (h, w) of the resized image before padding (mmdet's img_shape)
  scale       float32 [B, 2] (sy, sx) = resized / original (mmdet's scale_factor, as h, w)
  orig_size   int32 [B, 2] (h, w) of the original image
  image_id    int32 [B]
  mask        int32 [B] 1 for real examples (eval padding rows 0; train all 1)
  masks       uint8 [B, M, Hc, Wc // 8] only with masks (below): row i = GT row i's instance mask on the canvas,
              np.packbits(mask, axis=-1, bitorder='little') (JAX: jnp.unpackbits(..., axis=-1,
              bitorder='little')); rows past the image's objects are 0; crowd rows hold their crowd mask

Config fields read (configs/det_default.py; `config.seed`, `config.batch_size` too): data.dataset,
data_dir, manual_dir, train_split, eval_split, eval_batch_size, scale, hflip_prob, mean, std, size_divisor,
canvases, max_boxes, filter_empty_gt, min_size, prefetch, threads, cache, with_masks (absent: False).

Masks (Mask R-CNN): with config.data.with_masks the training batches carry `masks` (`transforms`,
`masks.canvas_masks`: mmdet's LoadAnnotations(with_mask=True) -> Resize -> RandomFlip -> Pad on gt_masks);
off, the batches are RetinaNet's, unchanged. Evaluation carries masks only when asked
(`create_eval_iterator(..., masks=True)`): mask AP is scored from the records' polygons / RLEs through
the metric, as COCO's evaluation reads the annotation file, so the eval pass does not pay for them. A kept
object without a segmentation is an error naming the image, the annotation and the field, raised when its
batch is read (checking beforehand would read every record of the split: COCO train is 18 GB).

Training stream: `batching.TrainPlan` (canvas-homogeneous batches, a pure function of (seed, step), so
`start_step=k` resumes exactly and batches do not depend on the process or device count); the flip of
stream position p = step * B + row is drawn from (seed, p). The host decodes, resizes, flips and pads the
uint8 image (`transforms`); normalisation runs on the device. Evaluation: `batching.eval_plan`, each process
taking its rows of every batch. Objects: an image with more kept objects than max_boxes is an error raised
when the iterator is built (from the split's metadata, naming the image and the max_boxes it needs): mmdet
trains on every object, so none is dropped silently. An image that fits no canvas is an error there too.
"""
import numpy as np

import jax

from hatnet_jax import layout
from hatnet_jax.data import stream
from hatnet_jax.data.detection import batching
from hatnet_jax.data.detection import masks as det_masks
from hatnet_jax.data.detection import sources as det_sources
from hatnet_jax.data.detection import transforms as det_transforms
from hatnet_jax.data.tf_host import tf

_SALT_AUG = 0xDE7A
KEYS = ('image', 'boxes', 'labels', 'box_valid', 'crowd', 'image_size', 'scale', 'orig_size', 'image_id', 'mask')
MASK_KEYS = KEYS + ('masks',)


def with_masks(d):
  """config.data.with_masks (False where the config has no such field): training batches carry `masks`."""
  return bool(d.get('with_masks', False))


def _canvases(d):
  return det_transforms.check_canvases(d.canvases, int(d.size_divisor))


def check_split(src, d, indices, masks=False):
  """Canvas index of every record of `src`; raises if one of `indices` fits no canvas or holds more kept
  objects than config.data.max_boxes, or (`masks`) a canvas width is no multiple of 8 (packed masks)."""
  canvases = _canvases(d)
  if masks and any(w % 8 for _, w in canvases):
    raise ValueError(f'config.data.canvases={canvases}: with masks every canvas width must be a multiple of 8 '
                     f'(masks are bit-packed along the width); set config.data.size_divisor to a multiple of 8')
  scale, div = tuple(int(x) for x in d.scale), int(d.size_divisor)
  heights, widths = src.meta['heights'], src.meta['widths']
  canvas_of = det_transforms.canvas_index(heights, widths, scale, canvases, div)
  bad = [int(i) for i in indices if canvas_of[i] < 0]
  if bad:
    i = bad[0]
    raise ValueError(f'{len(bad)} image(s) of split {src.split!r} fit no canvas of config.data.canvases='
                     f'{canvases}, e.g. {src.describe(i)}: {widths[i]}x{heights[i]} (WxH) resized to fit '
                     f'{scale} and padded to {div} is {det_transforms.padded_size(heights[i], widths[i], scale, div)} '
                     f'(h, w); add a canvas at least that large')
  kept = src.meta['num_kept'][np.asarray(indices, np.int64)]
  if len(kept) and kept.max() > int(d.max_boxes):
    i = int(np.asarray(indices)[np.argmax(kept)])
    raise ValueError(f'{int(np.sum(kept > int(d.max_boxes)))} image(s) of split {src.split!r} have more objects '
                     f'than config.data.max_boxes={int(d.max_boxes)}, e.g. {src.describe(i)} with {kept.max()}; '
                     f'set config.data.max_boxes >= {kept.max()} (mmdet trains on every object: none is dropped)')
  return canvas_of


def _lookup_rows(ds, src, chunk):
  """(pos, idx, canvas) -> (pos, serialized, canvas), records read `chunk` at a time."""
  def lookup(pos, idx, canvas):
    return pos, src.lookup(idx), canvas
  return ds.batch(chunk).map(lookup, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def train_dataset(src, d, plan, seed, lo, hi, start_step=0, num_steps=stream.INF_STEPS, threads=None):
  """Per-process host dataset: the transform's dict (`transforms.DetTransform`) batched to rows [lo, hi)."""
  transform = det_transforms.DetTransform(d, train=True, with_masks=with_masks(d))
  canvases = tf.constant(np.asarray(_canvases(d), np.int32))
  n, b = hi - lo, plan.batch
  ds = plan.dataset(start_step, num_steps)
  ds = ds.map(lambda k, idx, c: (k * b + lo + tf.range(n, dtype=tf.int64), idx[lo:hi], tf.fill([n], c)))
  ds = _lookup_rows(ds.unbatch(), src, max(1, min(32, n)))
  aug_seed = tf.constant(seed * 1_000_003 + _SALT_AUG, tf.int64)
  ds = ds.map(lambda p, rec, c: transform(rec, tf.stack([aug_seed, p]), tf.gather(canvases, c)),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(n, drop_remainder=True)
  return ds.prefetch(2).with_options(stream.options(d, threads))


def eval_dataset(src, d, plan, lo, hi, threads=None, masks=False):
  """Per-process host dataset of one pass: the transform's dict plus mask, rows [lo, hi) of each batch
  (instance masks only if `masks`)."""
  transform = det_transforms.DetTransform(d, train=False, with_masks=masks)
  canvases = np.asarray(_canvases(d), np.int32)
  n = hi - lo
  idx = np.concatenate([p.indices[lo:hi] for p in plan])
  mask = np.concatenate([p.mask[lo:hi] for p in plan]).astype(np.int32)
  canvas = np.repeat(np.array([p.canvas for p in plan], np.int32), n)
  ds = _lookup_rows(tf.data.Dataset.from_tensor_slices((mask, idx, canvas)), src, max(1, min(32, n)))
  table = tf.constant(canvases)
  zero_seed = tf.zeros([2], tf.int64)
  ds = ds.map(lambda m, rec, c: dict(transform(rec, zero_seed, tf.gather(table, c)), mask=m),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(n, drop_remainder=True)
  return ds.prefetch(2).with_options(stream.options(d, threads))


_JIT = {}


def _normalize_fn(mean, std, sharding):
  key = (mean, std, sharding)
  if key not in _JIT:
    _JIT[key] = jax.jit(lambda x, s: stream.normalize_pad(x, s, mean, std), out_shardings=sharding)
  return _JIT[key]


def _check_masks(record):
  """Decodes every kept object's mask of a parsed record (raises `masks.MaskError` naming the object)."""
  kept = np.asarray(record['objects/kept'], bool)
  segs = [s for s, k in zip(record['objects/segmentation'], kept) if k]
  ids = np.asarray(record['objects/id'])[kept]
  for j, (seg, ann_id) in enumerate(zip(segs, ids)):
    det_masks.decode(seg, int(record['height']), int(record['width']), record['image_id'], j, ann_id)


def _first_bad(src, indices, masks=False):
  """Decodes the records of `indices` eagerly (with `masks`, their instance masks too); a message naming the
  first that cannot be read, else None."""
  from hatnet_jax.data.decode import decode_image  # pylint: disable=g-import-not-at-top
  keys = ['image'] + (['image_id', 'height', 'width', 'objects/kept', 'objects/id', 'objects/segmentation']
                      if masks else [])
  for i in sorted(set(int(x) for x in indices)):
    try:
      record = src.read([i], keys=keys)[0]
      decode_image(tf.constant(record['image']))
      if masks:
        _check_masks(record)
    except Exception as e:  # pylint: disable=broad-except
      msg = getattr(e, 'message', str(e)).strip().splitlines()[0]
      return f'{src.describe(i)}: {msg}'
  return None


class _DetBatches(stream.GlobalBatches):
  """Host rows -> the global batch dict (KEYS, or MASK_KEYS with `masks`)."""

  def __init__(self, host_ds, src, d, sharding, global_batch, masks=False):
    self._src = src
    self._masks = bool(masks)
    self.keys = MASK_KEYS if masks else KEYS
    self._global_batch = global_batch
    self._normalize = _normalize_fn(tuple(float(x) for x in d.mean), tuple(float(x) for x in d.std), sharding)
    super().__init__(host_ds, sharding, int(d.prefetch))

  def _to_global(self, local):
    b = self._global_batch
    make = lambda x: self._global(np.asarray(x), (b,) + tuple(np.shape(x)[1:]))
    size = make(local['image_size'])
    out = {k: make(local[k]) for k in self.keys if k not in ('image', 'mask')}
    out['image'] = self._normalize(make(local['image']), size)
    mask = local['mask'] if 'mask' in local else np.ones([local['image'].shape[0]], np.int32)
    out['mask'] = make(mask.astype(np.int32))
    return {k: out[k] for k in self.keys}


class DetTrainIterator(_DetBatches):
  """Global training batches (KEYS); `step`, `get_state()`, `steps_per_epoch`, `plan` (a TrainPlan).
  `num_skipped` is always 0: an undecodable training image stops the run with its file name."""

  num_skipped = 0

  def __init__(self, host_ds, src, d, sharding, plan, start_step):
    self.plan = plan
    self.steps_per_epoch = plan.steps_per_epoch
    self.step = int(start_step)
    self._produced_step = int(start_step)
    super().__init__(host_ds, src, d, sharding, plan.batch, masks=with_masks(d))

  def _produce(self):
    step = self._produced_step
    try:
      local = next(self._np_iter)
    except tf.errors.InvalidArgumentError as e:
      indices = self.plan.batches(step, 1)[0][0]
      raise RuntimeError(f'Training data could not be read at step {step}: '
                         f'{_first_bad(self._src, indices, self._masks) or getattr(e, "message", str(e))}') from e
    self._produced_step += 1
    return self._to_global(local)

  def __next__(self):
    batch = self._prefetcher.get()
    self.step += 1
    return batch

  def get_state(self):
    return {'step': self.step}


def _train_plan(config):
  d = config.data
  src = det_sources.open_split(d, det_sources.dataset_info(d).train_split)
  eligible = det_sources.train_indices(src.meta, d)
  canvas_of = check_split(src, d, eligible, masks=with_masks(d))
  plan = batching.TrainPlan(eligible, canvas_of, len(_canvases(d)), int(config.batch_size), int(config.seed))
  return src, plan


def steps_per_epoch(config):
  """Training steps per epoch of the stream (`batching.TrainPlan`: full canvas-homogeneous batches, so a
  little under num_train / batch_size); the images left over are different ones each epoch."""
  return _train_plan(config)[1].steps_per_epoch


def create_train_iterator(config, mesh, start_step=0):
  src, plan = _train_plan(config)
  sharding, lo, hi = layout.batch_rows(mesh, config.batch_size)
  host = train_dataset(src, config.data, plan, int(config.seed), lo, hi, start_step)
  return DetTrainIterator(host, src, config.data, sharding, plan, start_step)


class DetEvalIterator(_DetBatches):
  """One exact pass (KEYS; padding rows have mask 0). `plan` lists the batches (indices, mask, canvas)."""

  def __init__(self, host_ds, src, d, plan, sharding, global_batch, masks=False):
    self.plan = plan
    self.num_batches = len(plan)
    self.num_examples = len(src)
    self._k = 0
    super().__init__(host_ds, src, d, sharding, global_batch, masks)

  def _produce(self):
    k = self._k
    if k >= self.num_batches:
      raise StopIteration
    try:
      local = next(self._np_iter)
    except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as e:
      bad = _first_bad(self._src, self.plan[k].indices, self._masks)
      raise stream.CorruptImageError(
          f'Evaluation stopped: an image of the eval split {self._src.split!r} could not be read (evaluation '
          f'never skips images; fix or remove it): {bad or getattr(e, "message", str(e))}') from None
    self._k += 1
    return self._to_global(local)

  def __len__(self):
    return self.num_batches


def create_eval_iterator(config, mesh, masks=False):
  """The exact eval pass; `masks`: carry instance masks too (evaluation itself does not need them)."""
  d = config.data
  batch = stream.eval_batch_size(config)
  info = det_sources.dataset_info(d)
  src = det_sources.open_split(d, info.eval_split)
  canvas_of = check_split(src, d, np.arange(len(src)), masks=masks)
  plan = batching.eval_plan(canvas_of, batch)
  sharding, lo, hi = layout.batch_rows(mesh, batch, what='config.data.eval_batch_size (0: batch_size)')
  host = eval_dataset(src, d, plan, lo, hi, masks=masks)
  return DetEvalIterator(host, src, d, plan, sharding, batch, masks=masks)
