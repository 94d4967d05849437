"""Datasets as random-access sources of (encoded image bytes, label), all through TFDS.

`config.data.dataset` selects:

* ``'imagenet2012'``: TFDS ImageNet prepared (once, `python -m hatnet_jax.data.prepare`) from the two
  ILSVRC2012 tars in ``config.data.manual_dir``, in the array_record format (random access).
* ``'digits'``: the real handwritten digits shipped with scikit-learn as a TFDS builder inside this
  package (`hatnet_jax.data.digits`); prepared on first use in a second.
* ``'image_folder'``: ``manual_dir/<split>/<class>/*.jpg|jpeg|png`` read through `tfds.ImageFolder`
  (class names, split sizes); files are read by index, nothing is converted.
* any other TFDS name (``'cifar10'``, ``'imagenette/320px'``, ``'oxford_flowers102:2.1.1'``): image and
  label keys from the builder's supervised keys (else its first Image / ClassLabel feature) and the class
  count from its ClassLabel. Prepared on demand in array_record format by a single process, like
  `tfds.load`.

A `Source` gives `len()` and `lookup(indices)` (a TF function: int64 indices -> encoded bytes, int32
labels), which the pipeline calls inside tf.data. Random access is what makes resume-by-step exact.
"""
import dataclasses
import logging
import os
from typing import Any, Optional, Tuple

import numpy as np

IMAGENET_FILES = (
    ('ILSVRC2012_img_train.tar', 'training images, 1,281,167 JPEGs as one tar per class '
     '(n01440764.tar, ...), 138 GB'),
    ('ILSVRC2012_img_val.tar', 'validation images, 50,000 JPEGs (labels ship with TFDS), 6.3 GB'),
)
IMAGE_FOLDER = 'image_folder'
DIGITS = 'digits'


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the trainer needs to know about the data without building a pipeline."""
  name: str
  num_classes: int
  num_train: int
  num_eval: int
  train_split: str
  eval_split: str
  image_key: str = 'image'
  label_key: str = 'label'
  class_names: Tuple[str, ...] = ()


def _tfds():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def _tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf


def _process_count():
  try:
    import jax  # pylint: disable=g-import-not-at-top
    return jax.process_count()
  except Exception:  # pylint: disable=broad-except
    return 1


def prepare_command(d, name=None, manual_dir=None):
  parts = ['python -m hatnet_jax.data.prepare', f'--dataset={name or d.dataset}']
  if manual_dir or d.manual_dir:
    parts.append(f'--manual_dir={manual_dir or d.manual_dir}')
  if d.data_dir:
    parts.append(f'--data_dir={d.data_dir}')
  return ' '.join(parts)


def imagenet_missing_message(d, builder, manual, missing):
  lines = [f'{builder.name} is not prepared in {builder.data_dir_root} and its manual files are '
           f'missing. Download them from https://image-net.org/download-images (registration '
           f'needed) and put them, as downloaded (do not unpack), in the manual dir {manual}:']
  for fname, what in IMAGENET_FILES:
    status = 'MISSING' if fname in missing else 'found'
    lines.append(f'  {os.path.join(manual, fname)}  [{status}]  {what}')
  lines.append('Then prepare it once, from one process (a few hours; writes ~150 GB of array_record '
               'files to the data dir):')
  lines.append('  ' + prepare_command(d, builder.name, manual))
  return '\n'.join(lines)


def get_builder(d):
  """The TFDS builder for `config.data` (ImageFolder for 'image_folder')."""
  tfds = _tfds()
  if d.dataset == IMAGE_FOLDER:
    if not d.manual_dir:
      raise ValueError("dataset='image_folder' needs config.data.manual_dir = the root of "
                       "<split>/<class>/<image> folders")
    if not os.path.isdir(d.manual_dir):
      raise FileNotFoundError(f'Image folder root {d.manual_dir} does not exist')
    return tfds.ImageFolder(d.manual_dir)
  if d.dataset == DIGITS:
    from hatnet_jax.data import digits  # pylint: disable=g-import-not-at-top
    return digits.builder(data_dir=d.data_dir)
  return tfds.builder(d.dataset, data_dir=d.data_dir)


def ensure_prepared(d, builder):
  """Prepares small/downloadable datasets on demand; raises with instructions for ImageNet."""
  tfds = _tfds()
  if isinstance(builder, tfds.ImageFolder) or builder.is_prepared():
    return
  if builder.name.startswith('imagenet2012'):
    manual = d.manual_dir or os.path.join(builder.data_dir_root, 'downloads', 'manual')
    missing = [f for f, _ in IMAGENET_FILES if not os.path.exists(os.path.join(manual, f))]
    if missing:
      raise FileNotFoundError(imagenet_missing_message(d, builder, manual, missing))
    raise RuntimeError(
        f'{builder.name} is not prepared in {builder.data_dir_root}; the manual files are in '
        f'{manual}. Prepare it once (single process, a few hours) with:\n  '
        + prepare_command(d, builder.name, manual))
  if _process_count() > 1 and d.dataset != DIGITS:
    raise RuntimeError(f'{builder.name} is not prepared in {builder.data_dir_root}. Prepare it once '
                       f'before a multi-process run:\n  {prepare_command(d, builder.name)}')
  logging.info('Preparing %s in %s (array_record)', builder.name, builder.data_dir_root)
  prepare_builder(builder, manual_dir=d.manual_dir)


def prepare_builder(builder, manual_dir=None):
  tfds = _tfds()
  config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  builder.download_and_prepare(file_format='array_record', download_config=config)


def _feature_keys(features, supervised_keys):
  tfds = _tfds()
  if supervised_keys and len(supervised_keys) >= 2 and isinstance(supervised_keys[0], str):
    image_key, label_key = supervised_keys[0], supervised_keys[1]
  else:
    image_key = label_key = None
    for key, feat in features.items():
      if image_key is None and isinstance(feat, tfds.features.Image):
        image_key = key
      if label_key is None and isinstance(feat, tfds.features.ClassLabel):
        label_key = key
  if image_key is None or label_key is None:
    raise ValueError(f'Cannot find an image and a class label feature in {features}')
  if not isinstance(features[image_key], tfds.features.Image):
    raise ValueError(f'Feature {image_key!r} is not a tfds.features.Image: {features[image_key]}')
  if not isinstance(features[label_key], tfds.features.ClassLabel):
    raise ValueError(f'Feature {label_key!r} is not a tfds.features.ClassLabel')
  return image_key, label_key


def resolve_eval_split(d, splits):
  """config.data.eval_split; 'validation' falls back to 'test' for datasets without one."""
  if splits and d.eval_split not in splits and d.eval_split == 'validation' and 'test' in splits:
    logging.info("No 'validation' split in %s: evaluating on 'test'", d.dataset)
    return 'test'
  return d.eval_split


def _split_size(builder, split):
  try:
    n = builder.info.splits[split].num_examples
    if n:
      return int(n)
  except (KeyError, ValueError, TypeError):
    pass
  if isinstance(builder, _tfds().ImageFolder):
    raise ValueError(f'No split {split!r} in image folder {builder.data_dir}: '
                     f'{list(builder.info.splits.keys())}')
  return len(_array_record_source(builder, split))  # e.g. under tfds.testing.mock_data


def dataset_info(d) -> DatasetInfo:
  """Cheap: reads the dataset's metadata (preparing small datasets on first use)."""
  builder = get_builder(d)
  ensure_prepared(d, builder)
  info = builder.info
  image_key, label_key = _feature_keys(info.features, info.supervised_keys)
  eval_split = resolve_eval_split(d, list(info.splits.keys()))
  label = info.features[label_key]
  return DatasetInfo(
      name=builder.name, num_classes=int(label.num_classes),
      num_train=_split_size(builder, d.train_split), num_eval=_split_size(builder, eval_split),
      train_split=d.train_split, eval_split=eval_split, image_key=image_key, label_key=label_key,
      class_names=tuple(label.names or ()))


def _array_record_source(builder, split):
  tfds = _tfds()
  try:
    return builder.as_data_source(split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  except NotImplementedError as e:
    raise RuntimeError(
        f'{builder.name} in {builder.data_dir} is not in a random-access format (array_record). '
        f'Convert it once with\n  tfds convert_format --dataset_dir={os.path.dirname(builder.data_dir)}'
        f' --out_file_format=array_record\nor prepare it again with python -m '
        f'hatnet_jax.data.prepare.') from e


@dataclasses.dataclass
class Source:
  """Random access to one split: `lookup(int64 indices) -> (encoded image bytes, int32 labels)`."""
  name: str
  split: str
  num_examples: int
  num_classes: int
  kind: str  # 'array_record' | 'files' | 'memory'
  data_source: Any = None  # tfds ArrayRecordDataSource returning serialized tf.Examples
  feature_spec: Optional[dict] = None
  image_key: str = 'image'
  label_key: str = 'label'
  paths: Optional[np.ndarray] = None  # 'files'
  images: Optional[np.ndarray] = None  # 'memory': encoded bytes (object array)
  labels: Optional[np.ndarray] = None  # 'files' / 'memory'

  def __len__(self):
    return self.num_examples

  def _tensor(self, name):
    """An eager tensor of a column, created once: tf.data functions capture it by reference (a
    constant created while tracing would be embedded in, and copied with, every function instance)."""
    cache = self.__dict__.setdefault('_tensors', {})
    if name not in cache:
      tf = _tf()
      with tf.init_scope():
        cache[name] = tf.constant(getattr(self, name))
    return cache[name]

  def _read_serialized(self, indices):
    keys = [int(i) for i in indices]
    if self.__dict__.get('_batched_reads', True):
      try:
        return np.array(list(self.data_source.__getitems__(keys)), dtype=object)
      except TypeError:  # tfds.testing.mock_data's mock has no working __getitems__
        self._batched_reads = False
    return np.array([self.data_source[k] for k in keys], dtype=object)

  def lookup(self, indices):
    """indices: int64 [n] tensor (inside tf.data). Returns (tf.string [n], tf.int32 [n])."""
    tf = _tf()
    if self.kind == 'array_record':
      serialized = tf.numpy_function(self._read_serialized, [indices], tf.string, stateful=False)
      serialized.set_shape([None])
      ex = tf.io.parse_example(serialized, self.feature_spec)
      return ex[self.image_key], tf.cast(ex[self.label_key], tf.int32)
    if self.kind == 'files':
      paths = tf.gather(self._tensor('paths'), indices)
      data = tf.map_fn(tf.io.read_file, paths, fn_output_signature=tf.string)
      return data, tf.gather(self._tensor('labels'), indices)
    if self.kind == 'memory':
      return (tf.gather(self._tensor('images'), indices),
              tf.gather(self._tensor('labels'), indices))
    raise ValueError(self.kind)

  def to_memory(self, chunk=1024):
    """A copy holding all encoded images in host memory (config.data.cache, small datasets)."""
    if self.kind == 'memory':
      return self
    tf = _tf()
    images, labels = [], []
    for start in range(0, self.num_examples, chunk):
      idx = tf.range(start, min(start + chunk, self.num_examples), dtype=tf.int64)
      data, lab = self.lookup(idx)
      images.extend(data.numpy().tolist())
      labels.append(lab.numpy())
    out = dataclasses.replace(
        self, kind='memory', data_source=None, paths=None,
        images=np.array(images, dtype=object),
        labels=np.concatenate(labels).astype(np.int32) if labels else np.zeros([0], np.int32))
    out.__dict__.pop('_tensors', None)
    return out


def open_split(d, split, cache=None) -> Source:
  """The random-access `Source` of `split` of the dataset in `config.data`."""
  tfds = _tfds()
  builder = get_builder(d)
  ensure_prepared(d, builder)
  info = builder.info
  image_key, label_key = _feature_keys(info.features, info.supervised_keys)
  num_classes = int(info.features[label_key].num_classes)
  if isinstance(builder, tfds.ImageFolder):
    examples = builder._split_examples.get(split)  # pylint: disable=protected-access
    if examples is None:
      raise ValueError(f'No split {split!r} in image folder {d.manual_dir}: '
                       f'{list(info.splits.keys())}')
    names = info.features[label_key]
    src = Source(
        name=IMAGE_FOLDER, split=split, num_examples=len(examples), num_classes=num_classes,
        kind='files', paths=np.array([e.image_path for e in examples], dtype=object),
        labels=np.array([names.str2int(e.label) for e in examples], np.int32))
  else:
    ds = _array_record_source(builder, split)
    tf = _tf()
    spec = {image_key: tf.io.FixedLenFeature([], tf.string),
            label_key: tf.io.FixedLenFeature([], tf.int64)}
    src = Source(name=builder.name, split=split, num_examples=len(ds), num_classes=num_classes,
                 kind='array_record', data_source=ds, feature_spec=spec, image_key=image_key,
                 label_key=label_key)
  if src.num_examples == 0:
    raise ValueError(f'Split {split!r} of {src.name} is empty')
  if cache if cache is not None else bool(d.cache):
    src = _cached(src, d)
  return src


_MEMORY = {}


def _cached(src, d):
  """One in-memory copy per (dataset, split) and process, shared by the train and eval pipelines."""
  key = (d.dataset, d.data_dir, d.manual_dir, src.split)
  if key not in _MEMORY:
    _MEMORY[key] = src.to_memory()
  return _MEMORY[key]
