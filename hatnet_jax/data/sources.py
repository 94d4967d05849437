"""Random-access sources of records, through TFDS: what makes resume-by-step exact for every task.

A `Source` gives `len()`, `lookup(indices)` (a TF function: int64 indices -> encoded bytes, int32 labels)
that the pipelines call inside tf.data, `describe(index)` naming an example for error messages, and
`to_memory()`. Kinds: `ArrayRecordSource` (a TFDS split in array_record format), `FileSource` (files read
in place), `MemorySource` (a copy in host memory). `prepare_builder` / `array_record_source` prepare and
open TFDS builders; each task's `sources.py` says which datasets it reads and how.
"""
import os

import numpy as np

from hatnet_jax.data.tf_host import tf, tfds


def process_count():
  try:
    import jax  # pylint: disable=g-import-not-at-top
    return jax.process_count()
  except Exception:  # pylint: disable=broad-except
    return 1


def prepare_command(d, name=None, manual_dir=None):
  parts = ['python -m hatnet_jax.tools.prepare_data', f'--dataset={name or d.dataset}']
  if manual_dir or d.manual_dir:
    parts.append(f'--manual_dir={manual_dir or d.manual_dir}')
  if d.data_dir:
    parts.append(f'--data_dir={d.data_dir}')
  return ' '.join(parts)


def prepare_builder(builder, manual_dir=None):
  config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  builder.download_and_prepare(file_format='array_record', download_config=config)


def array_record_source(builder, split):
  try:
    return builder.as_data_source(split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  except NotImplementedError as e:
    raise RuntimeError(
        f'{builder.name} in {builder.data_dir} is not in a random-access format (array_record). '
        f'Convert it once with\n  tfds convert_format --dataset_dir={os.path.dirname(builder.data_dir)}'
        f' --out_file_format=array_record\nor prepare it again with python -m '
        f'hatnet_jax.tools.prepare_data.') from e


class Source:
  """Random access to one split: `len()`, `lookup(int64 indices) -> (encoded image bytes, int32 labels)`
  (a TF function, called inside tf.data), `describe(index)` naming the example for error messages, and
  `to_memory()` (a copy holding every encoded image in host memory, for small datasets)."""

  def __init__(self, name: str, split: str, num_examples: int, num_classes: int):
    self.name, self.split, self.num_examples, self.num_classes = name, split, num_examples, num_classes
    self._tensors = {}

  def __len__(self):
    return self.num_examples

  def lookup(self, indices):
    raise NotImplementedError

  def describe(self, index: int) -> str:
    return f'example {int(index)} of split {self.split!r} of {self.name}'

  def _tensor(self, name, values):
    """An eager tensor of a column, created once: tf.data functions capture it by reference (a constant
    created while tracing would be embedded in, and copied with, every function instance)."""
    if name not in self._tensors:
      with tf.init_scope():
        self._tensors[name] = tf.constant(values)
    return self._tensors[name]

  def to_memory(self, chunk=1024) -> 'MemorySource':
    images, labels = [], []
    for start in range(0, self.num_examples, chunk):
      data, lab = self.lookup(tf.range(start, min(start + chunk, self.num_examples), dtype=tf.int64))
      images.extend(data.numpy().tolist())
      labels.append(lab.numpy())
    labels = np.concatenate(labels).astype(np.int32) if labels else np.zeros([0], np.int32)
    return MemorySource(self, np.array(images, dtype=object), labels)


class ArrayRecordSource(Source):
  """A TFDS split in the array_record format: serialized tf.Examples parsed with `feature_spec`."""

  def __init__(self, name, split, num_classes, data_source, image_key, label_key):
    super().__init__(name, split, len(data_source), num_classes)
    self.data_source, self.image_key, self.label_key = data_source, image_key, label_key
    self.feature_spec = {image_key: tf.io.FixedLenFeature([], tf.string),
                         label_key: tf.io.FixedLenFeature([], tf.int64)}
    self._batched_reads = True

  def _read_serialized(self, indices):
    keys = [int(i) for i in indices]
    if self._batched_reads:
      try:
        return np.array(list(self.data_source.__getitems__(keys)), dtype=object)
      except TypeError:  # tfds.testing.mock_data's mock has no working __getitems__
        self._batched_reads = False
    return np.array([self.data_source[k] for k in keys], dtype=object)

  def lookup(self, indices):
    serialized = tf.numpy_function(self._read_serialized, [indices], tf.string, stateful=False)
    serialized.set_shape([None])
    ex = tf.io.parse_example(serialized, self.feature_spec)
    return ex[self.image_key], tf.cast(ex[self.label_key], tf.int32)

  def describe(self, index):
    """The record's file name where the dataset stores one (ImageNet: 'file_name'), else its index."""
    try:
      ex = tf.io.parse_single_example(self._read_serialized([index])[0],
                                      {'file_name': tf.io.FixedLenFeature([], tf.string, default_value='')})
      file_name = ex['file_name'].numpy().decode('utf-8', 'replace')
    except Exception:  # pylint: disable=broad-except
      file_name = ''
    where = f'record {int(index)} of split {self.split!r} of {self.name}'
    return f'{file_name} ({where})' if file_name else where


class FileSource(Source):
  """Image files read in place by index (the image folder)."""

  def __init__(self, name, split, num_classes, paths, labels):
    super().__init__(name, split, len(paths), num_classes)
    self.paths, self.labels = paths, labels

  def lookup(self, indices):
    paths = tf.gather(self._tensor('paths', self.paths), indices)
    data = tf.map_fn(tf.io.read_file, paths, fn_output_signature=tf.string)
    return data, tf.gather(self._tensor('labels', self.labels), indices)

  def describe(self, index):
    return f'{self.paths[int(index)]} (split {self.split!r})'


class MemorySource(Source):
  """Every encoded image of another source, in host memory (config.data.cache)."""

  def __init__(self, original: Source, images: np.ndarray, labels: np.ndarray):
    super().__init__(original.name, original.split, len(images), original.num_classes)
    self.original, self.images, self.labels = original, images, labels

  def lookup(self, indices):
    return (tf.gather(self._tensor('images', self.images), indices),
            tf.gather(self._tensor('labels', self.labels), indices))

  def describe(self, index):
    return self.original.describe(index)

  def to_memory(self, chunk=1024):
    return self
