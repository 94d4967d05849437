"""Semantic segmentation datasets as random-access sources of (image bytes, mask bytes, file name).

`config.data.dataset` selects:

* ``'ade20k'``: ADEChallengeData2016 (150 classes), TFDS builder `hatnet_jax.data.segmentation.ade20k`, prepared
  once (array_record) from ``config.data.manual_dir`` (the unpacked release or its zip). A single
  process prepares it on first use; multi-process runs need it prepared before.
* ``'digit_scenes'`` / ``'digit_scenes/small'``: the offline demo (`hatnet_jax.data.demos.digit_scenes`,
  11 classes, labels derived from real digit scans), prepared on first use in seconds.
* ``'seg_folder'``: ``manual_dir/images/<split>/*.jpg|png`` + ``manual_dir/annotations/<split>/*.png``
  (same stems), read in place by index. Class names from ``manual_dir/classes.txt`` (one per line) if
  present, else ``config.data.num_classes`` (names '0', '1', ...). ``config.data.reduce_zero_label``
  (default True, like ADE20K: stored 0 = ignore) says how masks are read. Pairs and their sizes are
  validated when the split is opened; label values are not (values >= num_classes other than 255 are
  the user's responsibility).

All three read masks with mmseg's ``reduce_zero_label`` by default (0 -> 255 ignore, k -> k - 1); the
transforms apply it (`seg_transforms.read_label`).
"""
import dataclasses
import logging
import os
from typing import Any, Optional, Tuple

import numpy as np

from hatnet_jax.data import sources
from hatnet_jax.data.segmentation import ade20k as ade20k_lib
from hatnet_jax.data.tf_host import tf

ADE20K = 'ade20k'
DIGIT_SCENES = 'digit_scenes'
SEG_FOLDER = 'seg_folder'
IGNORE_INDEX = 255


@dataclasses.dataclass(frozen=True)
class SegDatasetInfo:
  name: str
  num_classes: int
  num_train: int
  num_eval: int
  class_names: Tuple[str, ...]
  ignore_index: int
  train_split: str = 'train'
  eval_split: str = 'validation'
  reduce_zero_label: bool = True




def _process_count():
  try:
    import jax  # pylint: disable=g-import-not-at-top
    return jax.process_count()
  except Exception:  # pylint: disable=broad-except
    return 1


def _kind(d):
  name = str(d.dataset)
  if name == ADE20K or name.startswith(DIGIT_SCENES) or name == SEG_FOLDER:
    return name.split('/')[0]
  raise ValueError(f"Unknown segmentation dataset {name!r}: use 'ade20k', 'digit_scenes', "
                   f"'digit_scenes/small' or 'seg_folder'")


def get_builder(d):
  kind = _kind(d)
  if kind == ADE20K:
    return ade20k_lib.builder(data_dir=d.get('data_dir'))
  if kind == DIGIT_SCENES:
    from hatnet_jax.data.demos import digit_scenes  # pylint: disable=g-import-not-at-top
    parts = str(d.dataset).split('/')
    return digit_scenes.builder(parts[1] if len(parts) > 1 else 'full', data_dir=d.get('data_dir'))
  return None


def ensure_prepared(d, builder):
  if builder.is_prepared():
    return
  if _kind(d) == ADE20K:
    manual = d.get('manual_dir')
    ade20k_lib.locate(manual)  # layout error naming the path and the expected layout
    if _process_count() > 1:
      data_dir = f' --data_dir={d.data_dir}' if d.get('data_dir') else ''
      raise RuntimeError(f'ade20k is not prepared in {builder.data_dir_root}; prepare it once from '
                         f'one process: python -m hatnet_jax.tools.prepare_data --dataset=ade20k '
                         f'--manual_dir={manual}{data_dir}')
    logging.info('Preparing ade20k from %s in %s (array_record, ~20 min)', manual,
                 builder.data_dir_root)
    sources.prepare_builder(builder, manual_dir=manual)
    return
  sources.prepare_builder(builder)


def _split_size(builder, split):
  try:
    return int(builder.info.splits[split].num_examples)
  except KeyError:
    raise ValueError(f'No split {split!r} in {builder.name}: {list(builder.info.splits.keys())}')


def _eval_split(d, splits):
  split = d.get('eval_split', 'validation')
  if split not in splits and split == 'validation' and 'test' in splits:
    return 'test'
  return split


def _folder_classes(d):
  path = os.path.join(d.manual_dir, 'classes.txt')
  if os.path.isfile(path):
    with open(path) as f:
      return tuple(l.strip() for l in f if l.strip())
  n = int(d.get('num_classes', 0) or 0)
  if n <= 0:
    raise ValueError(f"seg_folder needs {path} (one class name per line) or config.data.num_classes")
  return tuple(str(i) for i in range(n))


def _folder_root(d):
  if not d.get('manual_dir'):
    raise ValueError("dataset='seg_folder' needs config.data.manual_dir = the root of images/<split>/ "
                     "and annotations/<split>/")
  if not os.path.isdir(d.manual_dir):
    raise FileNotFoundError(f'seg_folder root {d.manual_dir} does not exist. Expected layout: '
                            + ade20k_lib.what_layout(SEG_FOLDER))
  return d.manual_dir


def dataset_info(d) -> SegDatasetInfo:
  """(name, num_classes, num_train, num_eval, class_names, ignore_index, splits) of config.data."""
  kind = _kind(d)
  ignore = int(d.get('ignore_index', IGNORE_INDEX))
  reduce = bool(d.get('reduce_zero_label', True))
  if kind == SEG_FOLDER:
    root = _folder_root(d)
    splits = [s for s in os.listdir(os.path.join(root, 'images'))] if os.path.isdir(
        os.path.join(root, 'images')) else []
    eval_split = _eval_split(d, splits)
    names = _folder_classes(d)
    return SegDatasetInfo(
        SEG_FOLDER, len(names), len(_folder_pairs(root, d.train_split)),
        len(_folder_pairs(root, eval_split)), names, ignore, d.train_split, eval_split, reduce)
  builder = get_builder(d)
  ensure_prepared(d, builder)
  eval_split = _eval_split(d, list(builder.info.splits.keys()))
  if kind == ADE20K:
    names = ade20k_lib.CLASSES
  else:
    from hatnet_jax.data.demos import digit_scenes  # pylint: disable=g-import-not-at-top
    names = digit_scenes.CLASSES
  return SegDatasetInfo(builder.name if kind == ADE20K else kind, len(names),
                        _split_size(builder, d.train_split), _split_size(builder, eval_split),
                        tuple(names), ignore, d.train_split, eval_split, True)


_PAIRS = {}


def _folder_pairs(root, split):
  key = (os.path.abspath(root), split)
  if key not in _PAIRS:
    _PAIRS[key] = ade20k_lib.scan_dir(root, split, f'seg_folder {split}')
  return _PAIRS[key]


@dataclasses.dataclass
class SegSource:
  """Random access to one split: lookup(int64 [n]) -> (image bytes [n], mask bytes [n], names [n])."""
  name: str
  split: str
  num_examples: int
  kind: str  # 'array_record' | 'files' | 'memory'
  data_source: Any = None
  images: Optional[np.ndarray] = None  # 'files': paths; 'memory': encoded bytes (object arrays)
  masks: Optional[np.ndarray] = None
  names: Optional[np.ndarray] = None  # 'files' / 'memory'
  where: str = ''  # the dataset's location, for error messages

  def __len__(self):
    return self.num_examples

  def _tensor(self, name):
    cache = self.__dict__.setdefault('_tensors', {})
    if name not in cache:
      with tf.init_scope():
        cache[name] = tf.constant(getattr(self, name))
    return cache[name]

  def _read(self, indices):
    keys = [int(i) for i in indices]
    return np.array(list(self.data_source.__getitems__(keys)), dtype=object)

  def lookup(self, indices):
    if self.kind == 'array_record':
      serialized = tf.numpy_function(self._read, [indices], tf.string, stateful=False)
      serialized.set_shape([None])
      spec = {k: tf.io.FixedLenFeature([], tf.string) for k in ('image', 'annotation', 'file_name')}
      ex = tf.io.parse_example(serialized, spec)
      return ex['image'], ex['annotation'], ex['file_name']
    if self.kind == 'files':
      read = lambda t: tf.map_fn(tf.io.read_file, t, fn_output_signature=tf.string)
      return (read(tf.gather(self._tensor('images'), indices)),
              read(tf.gather(self._tensor('masks'), indices)),
              tf.gather(self._tensor('names'), indices))
    if self.kind == 'memory':
      return tuple(tf.gather(self._tensor(k), indices) for k in ('images', 'masks', 'names'))
    raise ValueError(self.kind)

  def read_numpy(self, indices):
    """Eager (python) lookup: lists of (image bytes, mask bytes, file name)."""
    img, mask, name = self.lookup(tf.constant(np.asarray(indices, np.int64)))
    return list(zip(img.numpy().tolist(), mask.numpy().tolist(),
                    [n.decode() for n in name.numpy().tolist()]))

  def image_sizes(self, chunk=256):
    """int32 [N, 2] (height, width) of every image, from the headers; computed once per split."""
    cache = self.__dict__.get('_sizes')
    if cache is None:
      cache = _SIZES.get(self._key())
    if cache is None:
      out = np.zeros([self.num_examples, 2], np.int32)
      for start in range(0, self.num_examples, chunk):
        idx = np.arange(start, min(start + chunk, self.num_examples))
        if self.kind == 'files':
          items = [(i, self.images[i], self.images[i]) for i in idx]
        else:
          items = [(i, img, name) for i, (img, _, name) in zip(idx, self.read_numpy(idx))]
        for i, data, name in items:
          try:
            out[i] = ade20k_lib.image_size(data)
          except Exception as e:  # pylint: disable=broad-except
            raise ValueError(f'{self.name} split {self.split!r}: cannot read the image header of '
                             f'example {i} ({name}): {e}') from e
      cache = out
      _SIZES[self._key()] = out
    self._sizes = cache
    return cache

  def _key(self):
    return (self.name, self.where, self.split, self.num_examples)

  def to_memory(self, chunk=512):
    if self.kind == 'memory':
      return self
    imgs, masks, names = [], [], []
    for start in range(0, self.num_examples, chunk):
      for a, b, c in self.read_numpy(np.arange(start, min(start + chunk, self.num_examples))):
        imgs.append(a)
        masks.append(b)
        names.append(c)
    obj = lambda xs: np.array(xs, dtype=object)
    out = dataclasses.replace(self, kind='memory', data_source=None, images=obj(imgs),
                              masks=obj(masks), names=obj(names))
    out.__dict__.pop('_tensors', None)
    return out


_SIZES = {}
_MEMORY = {}


def _check_folder_sizes(pairs, split):
  for stem, img, ann in pairs:
    try:
      ih, iw = ade20k_lib.image_size(img)
      mh, mw = ade20k_lib.image_size(ann)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'seg_folder split {split!r}: cannot read the header of {img} or {ann}: '
                       f'{e}') from e
    if (ih, iw) != (mh, mw):
      raise ValueError(f'seg_folder {split}: annotation {ann} has size {mw}x{mh} (WxH) but its image '
                       f'{img} is {iw}x{ih}')
    del stem


def open_split(d, split, cache=None) -> SegSource:
  kind = _kind(d)
  if kind == SEG_FOLDER:
    root = _folder_root(d)
    pairs = _folder_pairs(root, split)
    key = (os.path.abspath(root), split, 'sizes_checked')
    if key not in _PAIRS:
      _check_folder_sizes(pairs, split)
      _PAIRS[key] = True
    obj = lambda xs: np.array(list(xs), dtype=object)
    src = SegSource(SEG_FOLDER, split, len(pairs), 'files', images=obj(p[1] for p in pairs),
                    masks=obj(p[2] for p in pairs), names=obj(p[0] for p in pairs),
                    where=os.path.abspath(root))
  else:
    builder = get_builder(d)
    ensure_prepared(d, builder)
    ds = sources.array_record_source(builder, split)
    src = SegSource(builder.name, split, len(ds), 'array_record', data_source=ds,
                    where=str(builder.data_dir))
  if src.num_examples == 0:
    raise ValueError(f'Split {split!r} of {src.name} is empty')
  if cache if cache is not None else bool(d.get('cache', False)):
    mkey = src._key()  # pylint: disable=protected-access
    if mkey not in _MEMORY:
      _MEMORY[mkey] = src.to_memory()
    src = _MEMORY[mkey]
  return src
