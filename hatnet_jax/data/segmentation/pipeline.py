"""Semantic segmentation train / eval iterators (Semantic FPN on ADE20K, the PVT / mmseg 0.13 recipe).

    train_it = seg_pipeline.create_train_iterator(config, mesh, start_step=0)
    batch = next(train_it)   # image f32 [B, 512, 512, 3] normalised, label int32 [B, 512, 512] (255 ignore)
    for batch in seg_pipeline.create_eval_iterator(config, mesh):
      ...  # image f32 [B, Ha, Wa, 3], label int32 [B, Hl, Wl], orig_size int32 [B, 2], mask f32 [B]

Config fields read (configs/seg_default.py and seg_digits.py set them; `config.seed`, `config.batch_size` too):
  data.dataset          'ade20k' | 'digit_scenes' | 'digit_scenes/small' | 'seg_folder'
  data.data_dir         TFDS data dir (ade20k, digit_scenes)
  data.manual_dir       ade20k: ADEChallengeData2016 (unpacked or its zip); seg_folder: its root
  data.train_split / eval_split   'train' / 'validation' ('validation' falls back to 'test')
  data.eval_batch_size  global eval batch (0: batch_size)
  data.crop_size        512: training crop (and padded size)
  data.scale            (2048, 512): Resize / AlignResize img_scale (long, short)
  data.ratio_range      (0.5, 2.0)
  data.cat_max_ratio    0.75
  data.hflip_prob       0.5
  data.photometric      True: PhotoMetricDistortion
  data.mean, data.std   on [0, 1] pixels (ImageNet: mmseg's 123.675/58.395 ... divided by 255)
  data.ignore_index     255
  data.align            32: AlignResize size divisor (eval)
  data.prefetch, data.threads, data.cache   as in classification
  data.num_classes, data.reduce_zero_label  seg_folder only (see seg_sources)

Training stream: the classification design (`stream.stream_indices` etc.): global batch k holds stream
positions k*B .. k*B+B-1, position p is example shuffle_epoch(p // N)[p % N], and its augmentation
randomness is derived from (seed, p) alone, so `start_step=k` resumes exactly and batches do not depend
on the process or device count. The host runs decode, Resize, RandomCrop, flip and the photometric
distortion in tf.data (uint8); normalisation and padding run on the device. Undecodable training data
stops the run with an error naming the file (no silent replacement for segmentation).

Evaluation: images are grouped by their aligned (AlignResize) shape, computed from image headers read
once when the iterator is built (cached per split and process). Each group is cut into batches of
eval_batch_size (the last one padded, mask 0), so the model sees every image at its own aligned size
and compiles once per distinct shape. Labels are the original-size labels padded with 255 to the
largest original size in the group; `orig_size` gives each image's (h, w) to crop the upsampled logits.
Each process takes its rows of every batch: every image is counted exactly once over all processes.
"""
import collections

import ml_collections
import numpy as np

import jax
import jax.numpy as jnp

from hatnet_jax import layout
from hatnet_jax.data import stream
from hatnet_jax.data.segmentation import sources as seg_sources
from hatnet_jax.data.segmentation import transforms as seg_transforms
from hatnet_jax.data.tf_host import tf

_SALT_AUG = 0x5E6A


def _reduce_zero_label(d, info):
  return bool(info.reduce_zero_label) if info.name == seg_sources.SEG_FOLDER else True


def _find_bad_example(src, indices, transform_check):
  """Eagerly decodes examples one by one; returns a message naming the first that fails."""
  for i in sorted(set(int(x) for x in indices)):
    img, mask, name = src.read_numpy([i])[0]
    try:
      transform_check(img, mask)
    except Exception as e:  # pylint: disable=broad-except
      msg = getattr(e, 'message', str(e)).strip().splitlines()[0]
      if src.kind == 'files':
        name = f'{src.images[i]} / {src.masks[i]}'
      return f'{src.name} split {src.split!r}, example {i}, file {name!r}: {msg}'
  return None


def _decode_check(reduce, ignore):
  def check(img, mask):
    image = seg_transforms.decode_image(tf.constant(img))
    lab = seg_transforms.read_label(tf.constant(mask), reduce, ignore)
    if tuple(lab.shape) != tuple(image.shape[:2]):
      raise ValueError(f'mask size {tuple(lab.shape)} != image size {tuple(image.shape[:2])}')
  return check


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------


def train_dataset(src, d, seed, global_batch, lo, hi, start_step=0, num_steps=stream.INF_STEPS,
                  threads=None, reduce_zero_label=True):
  """Per-process host dataset: dict(image uint8 [n,C,C,3], label uint8 (int32 if ignore_index > 255)
  [n,C,C], valid int32 [n,2] = each image's size before padding)."""
  transform = seg_transforms.TrainTransform(d, reduce_zero_label)
  num = len(src)
  ds = stream.position_dataset(start_step, num_steps, global_batch, lo, hi)
  ds = ds.map(lambda p: (p, stream.stream_indices(p, num, seed, 1)))
  chunk = max(1, min(32, hi - lo))

  def lookup(p, i):
    img, mask, _ = src.lookup(i)
    return p, img, mask
  ds = ds.batch(chunk).map(lookup, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
  aug_seed = tf.constant(seed * 1_000_003 + _SALT_AUG, tf.int64)
  ds = ds.map(lambda p, img, mask: transform(img, mask, tf.stack([aug_seed, p])),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  # Labels travel as uint8 (4x less host->device traffic) when the ignore index fits; int32 on device.
  small = int(d.ignore_index) <= 255
  ds = ds.batch(hi - lo, drop_remainder=True)
  ds = ds.map(lambda img, lab, valid: dict(image=img, label=tf.cast(lab, tf.uint8) if small else lab,
                                           valid=valid))
  return ds.prefetch(2).with_options(stream.options(d, threads))


_JIT = {}


def _train_device_fn(mean, std, sharding):
  key = ('train', mean, std, sharding)
  if key not in _JIT:
    _JIT[key] = jax.jit(lambda x, v, l: (stream.normalize_pad(x, v, mean, std), l.astype(jnp.int32)),
                        out_shardings=(sharding, sharding))
  return _JIT[key]


def _normalize_fn(mean, std, sharding):
  key = (mean, std, sharding)
  if key not in _JIT:
    _JIT[key] = jax.jit(lambda x, v: stream.normalize_pad(x, v, mean, std), out_shardings=sharding)
  return _JIT[key]


class SegTrainIterator(stream.GlobalBatches):
  """Global training batches dict(image f32 [B,C,C,3], label int32 [B,C,C]); `step`, `get_state()`.

  `num_skipped` is always 0: an undecodable training example stops the run with its file name.
  """

  num_skipped = 0

  def __init__(self, host_ds, src, d, sharding, global_batch, seed, start_step, reduce_zero_label):
    self._src = src
    self._global_batch = global_batch
    self._crop = int(d.crop_size)
    self._seed = int(seed)
    self._check = _decode_check(reduce_zero_label, int(d.ignore_index))
    self._device_fn = _train_device_fn(tuple(d.mean), tuple(d.std), sharding)
    self.step = int(start_step)
    self._produced_step = int(start_step)
    super().__init__(host_ds, sharding, int(d.prefetch))

  def _produce(self):
    step = self._produced_step
    try:
      local = next(self._np_iter)
    except tf.errors.InvalidArgumentError as e:
      raise RuntimeError(self._describe_error(step, e)) from e
    b, c = self._global_batch, self._crop
    make = self._global
    images = make(local['image'], (b, c, c, 3))
    valid = make(local['valid'], (b, 2))
    self._produced_step += 1
    images, labels = self._device_fn(images, valid, make(local['label'], (b, c, c)))
    return dict(image=images, label=labels)

  def _describe_error(self, step, e):
    pos = tf.range(step * self._global_batch, (step + 1) * self._global_batch, dtype=tf.int64)
    idx = stream.stream_indices(pos, len(self._src), self._seed, 1).numpy()
    bad = _find_bad_example(self._src, idx, self._check)
    return (f'Training data could not be read at step {step}: '
            f'{bad or getattr(e, "message", str(e))}')

  def __next__(self):
    batch = self._prefetcher.get()
    self.step += 1
    return batch

  def get_state(self):
    return {'step': self.step}


def create_train_iterator(config, mesh, start_step=0):
  d = config.data
  info = seg_sources.dataset_info(d)
  src = seg_sources.open_split(d, info.train_split)
  sharding, lo, hi = layout.batch_rows(mesh, config.batch_size)
  reduce = _reduce_zero_label(d, info)
  host = train_dataset(src, d, int(config.seed), int(config.batch_size), lo, hi, start_step,
                       reduce_zero_label=reduce)
  return SegTrainIterator(host, src, d, sharding, int(config.batch_size), int(config.seed),
                          start_step, reduce)


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------


EvalBatch = collections.namedtuple('EvalBatch', 'indices mask aligned label_hw')


def eval_plan(sizes, d, global_batch):
  """The eval batches: images grouped by aligned shape (sorted), batches of `global_batch`.

  sizes: int [N, 2] original (h, w). Returns a list of EvalBatch(indices int64 [B] (padding repeats
  the group's last image), mask bool [B], aligned (h, w), label_hw (h, w) = the group's max original
  size).
  """
  scale, align = tuple(int(x) for x in d.scale), int(d.align)
  groups = collections.defaultdict(list)
  for i, (h, w) in enumerate(np.asarray(sizes).tolist()):
    groups[seg_transforms.align_size(h, w, scale, align)].append(i)
  plan = []
  for aligned in sorted(groups):
    members = np.array(groups[aligned], np.int64)
    lab_hw = tuple(int(x) for x in np.asarray(sizes)[members].max(axis=0))
    for start in range(0, len(members), global_batch):
      chunk = members[start:start + global_batch]
      n = len(chunk)
      idx = np.concatenate([chunk, np.full([global_batch - n], chunk[-1], np.int64)])
      mask = np.arange(global_batch) < n
      plan.append(EvalBatch(idx, mask, aligned, lab_hw))
  return plan


def eval_dataset(src, d, plan, lo, hi, threads=None, reduce_zero_label=True):
  """Per-process host dataset of one pass: dict(image uint8, label int32, orig_size int32, mask bool)."""
  transform = seg_transforms.EvalTransform(d, reduce_zero_label)
  n = hi - lo
  cols = dict(
      idx=np.concatenate([b.indices[lo:hi] for b in plan]),
      mask=np.concatenate([b.mask[lo:hi] for b in plan]),
      aligned=np.repeat(np.array([b.aligned for b in plan], np.int32), n, axis=0),
      label_hw=np.repeat(np.array([b.label_hw for b in plan], np.int32), n, axis=0))
  ds = tf.data.Dataset.from_tensor_slices(cols)

  def lookup(x):
    img, mask, _ = src.lookup(x['idx'])
    return dict(x, img=img, ann=mask)
  ds = ds.batch(max(1, min(32, n))).map(lookup, num_parallel_calls=tf.data.AUTOTUNE).unbatch()

  def one(x):
    img, lab, orig = transform(x['img'], x['ann'], x['aligned'], x['label_hw'])
    return dict(image=img, label=lab, orig_size=orig, mask=x['mask'])
  ds = ds.map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(n, drop_remainder=True)
  return ds.prefetch(2).with_options(stream.options(d, threads))


class SegEvalIterator(stream.GlobalBatches):
  """One exact pass: dict(image f32 [B,Ha,Wa,3], label int32 [B,Hl,Wl], orig_size int32 [B,2],
  mask f32 [B]). `plan` lists the batches (indices, mask, shapes); `groups` the distinct shapes."""

  def __init__(self, host_ds, src, d, plan, sharding, global_batch, reduce_zero_label):
    self._src = src
    self.plan = plan
    self.groups = sorted(collections.Counter((b.aligned, b.label_hw) for b in plan).items())
    self.num_batches = len(plan)
    self.num_examples = len(src)
    self._global_batch = global_batch
    self._check = _decode_check(reduce_zero_label, int(d.ignore_index))
    self._normalize = _normalize_fn(tuple(d.mean), tuple(d.std), sharding)
    self._k = 0
    super().__init__(host_ds, sharding, int(d.prefetch))

  def _produce(self):
    k = self._k
    if k >= self.num_batches:
      raise StopIteration
    try:
      local = next(self._np_iter)
    except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as e:
      bad = _find_bad_example(self._src, self.plan[k].indices, self._check)
      raise stream.CorruptImageError(
          f'Evaluation stopped: an example of the eval split {self._src.split!r} could not be read (evaluation '
          f'never skips examples; fix or remove it): {bad or getattr(e, "message", str(e))}') from None
    self._k += 1
    b = self._global_batch
    (ah, aw), (lh, lw) = self.plan[k].aligned, self.plan[k].label_hw
    make = self._global
    full = np.tile(np.array([[ah, aw]], np.int32), (local['image'].shape[0], 1))
    images = self._normalize(make(local['image'], (b, ah, aw, 3)), make(full, (b, 2)))
    return dict(image=images, label=make(local['label'], (b, lh, lw)),
                orig_size=make(local['orig_size'], (b, 2)),
                mask=make(local['mask'].astype(np.float32), (b,)))

  def __len__(self):
    return self.num_batches


def create_eval_iterator(config, mesh):
  d = config.data
  batch = stream.eval_batch_size(config)
  info = seg_sources.dataset_info(d)
  src = seg_sources.open_split(d, info.eval_split)
  plan = eval_plan(src.image_sizes(), d, batch)
  sharding, lo, hi = layout.batch_rows(mesh, batch, what='config.data.eval_batch_size (0: batch_size)')
  reduce = _reduce_zero_label(d, info)
  host = eval_dataset(src, d, plan, lo, hi, reduce_zero_label=reduce)
  return SegEvalIterator(host, src, d, plan, sharding, batch, reduce)
