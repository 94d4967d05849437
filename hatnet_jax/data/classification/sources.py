"""Classification datasets as random-access sources of (encoded image bytes, label), all through TFDS.

`config.data.dataset` selects:

* ``'imagenet2012'``: TFDS ImageNet prepared (once, `python -m hatnet_jax.tools.prepare_data`) from the two
  ILSVRC2012 tars in ``config.data.manual_dir``, in the array_record format (random access).
* ``'digits'``: the real handwritten digits shipped with scikit-learn as a TFDS builder inside this
  package (`hatnet_jax.data.demos.digits`); prepared on first use in a second.
* ``'image_folder'``: ``manual_dir/<split>/<class>/*.jpg|jpeg|png`` read through `tfds.ImageFolder`
  (class names, split sizes); files are read by index, nothing is converted.
* any other TFDS name (``'cifar10'``, ``'imagenette/320px'``, ``'oxford_flowers102:2.1.1'``): image and
  label keys from the builder's supervised keys (else its first Image / ClassLabel feature) and the class
  count from its ClassLabel. Prepared on demand in array_record format by a single process, like
  `tfds.load`.

Each split opens as a `data.sources.Source` (random access by index: what makes resume-by-step exact).
"""
import dataclasses
import logging
import os
from typing import Tuple

import numpy as np

from hatnet_jax.data import sources
from hatnet_jax.data.tf_host import tfds

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
  image_shape: Tuple = (None, None, 3)  # the feature's declared shape (None: varies per image)






def imagenet_missing_message(d, builder, manual, missing):
  lines = [f'{builder.name} is not prepared in {builder.data_dir_root} and its manual files are '
           f'missing. Download them from https://image-net.org/download-images (registration '
           f'needed) and put them, as downloaded (do not unpack), in the manual dir {manual}:']
  for fname, what in IMAGENET_FILES:
    status = 'MISSING' if fname in missing else 'found'
    lines.append(f'  {os.path.join(manual, fname)}  [{status}]  {what}')
  lines.append('Then prepare it once, from one process (a few hours; writes ~150 GB of array_record '
               'files to the data dir):')
  lines.append('  ' + sources.prepare_command(d, builder.name, manual))
  return '\n'.join(lines)


def get_builder(d):
  """The TFDS builder for `config.data` (ImageFolder for 'image_folder')."""
  if d.dataset == IMAGE_FOLDER:
    if not d.manual_dir:
      raise ValueError("dataset='image_folder' needs config.data.manual_dir = the root of "
                       "<split>/<class>/<image> folders")
    if not os.path.isdir(d.manual_dir):
      raise FileNotFoundError(f'Image folder root {d.manual_dir} does not exist')
    return tfds.ImageFolder(d.manual_dir)
  if d.dataset == DIGITS:
    from hatnet_jax.data.demos import digits  # pylint: disable=g-import-not-at-top
    return digits.builder(data_dir=d.data_dir)
  return tfds.builder(d.dataset, data_dir=d.data_dir)


def check_imagenet_files(d, builder) -> str:
  """The ImageNet manual dir; FileNotFoundError saying which of its two tars are missing and where."""
  manual = d.manual_dir or os.path.join(builder.data_dir_root, 'downloads', 'manual')
  missing = [f for f, _ in IMAGENET_FILES if not os.path.exists(os.path.join(manual, f))]
  if missing:
    raise FileNotFoundError(imagenet_missing_message(d, builder, manual, missing))
  return manual


def ensure_prepared(d, builder):
  """Prepares small/downloadable datasets on demand; raises with instructions for ImageNet."""
  if isinstance(builder, tfds.ImageFolder) or builder.is_prepared():
    return
  if builder.name.startswith('imagenet2012'):
    manual = check_imagenet_files(d, builder)
    raise RuntimeError(
        f'{builder.name} is not prepared in {builder.data_dir_root}; the manual files are in '
        f'{manual}. Prepare it once (single process, a few hours) with:\n  '
        + sources.prepare_command(d, builder.name, manual))
  if sources.process_count() > 1 and d.dataset != DIGITS:
    raise RuntimeError(f'{builder.name} is not prepared in {builder.data_dir_root}. Prepare it once '
                       f'before a multi-process run:\n  {sources.prepare_command(d, builder.name)}')
  logging.info('Preparing %s in %s (array_record)', builder.name, builder.data_dir_root)
  sources.prepare_builder(builder, manual_dir=d.manual_dir)


def feature_keys(features, supervised_keys):
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
  if isinstance(builder, tfds.ImageFolder):
    raise ValueError(f'No split {split!r} in image folder {builder.data_dir}: '
                     f'{list(builder.info.splits.keys())}')
  return len(sources.array_record_source(builder, split))  # e.g. under tfds.testing.mock_data


def dataset_info(d) -> DatasetInfo:
  """Cheap: reads the dataset's metadata (preparing small datasets on first use)."""
  builder = get_builder(d)
  ensure_prepared(d, builder)
  info = builder.info
  image_key, label_key = feature_keys(info.features, info.supervised_keys)
  eval_split = resolve_eval_split(d, list(info.splits.keys()))
  label = info.features[label_key]
  return DatasetInfo(
      name=builder.name, num_classes=int(label.num_classes),
      num_train=_split_size(builder, d.train_split), num_eval=_split_size(builder, eval_split),
      train_split=d.train_split, eval_split=eval_split, image_key=image_key, label_key=label_key,
      class_names=tuple(label.names or ()), image_shape=tuple(info.features[image_key].shape))


def _image_folder_source(d, builder, split, label_feature) -> sources.FileSource:
  examples = builder._split_examples.get(split)  # pylint: disable=protected-access
  if examples is None:
    raise ValueError(f'No split {split!r} in image folder {d.manual_dir}: {list(builder.info.splits.keys())} '
                     f'(expected {d.manual_dir}/<split>/<class>/<image>)')
  split_dir = os.path.join(d.manual_dir, split)
  empty = sorted(c for c in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, c))
                 and not any(e.label == c for e in examples))
  if empty and not d.get('allow_empty_classes', False):
    raise ValueError(f'Image folder {split_dir}: class director{"ies" if len(empty) > 1 else "y"} '
                     f'{", ".join(empty)} hold{"" if len(empty) > 1 else "s"} no images, so '
                     f'{"they" if len(empty) > 1 else "it"} would become class(es) the model can never see. '
                     f'Remove {"them" if len(empty) > 1 else "it"}, add images, or set '
                     f'--config.data.allow_empty_classes=True to keep the class numbering as it is.')
  return sources.FileSource(IMAGE_FOLDER, split, int(label_feature.num_classes),
                    np.array([e.image_path for e in examples], dtype=object),
                    np.array([label_feature.str2int(e.label) for e in examples], np.int32))


def open_split(d, split, cache=None) -> sources.Source:
  """The random-access `Source` of `split` of the dataset in `config.data`."""
  builder = get_builder(d)
  ensure_prepared(d, builder)
  info = builder.info
  image_key, label_key = feature_keys(info.features, info.supervised_keys)
  if isinstance(builder, tfds.ImageFolder):
    src = _image_folder_source(d, builder, split, info.features[label_key])
  else:
    src = sources.ArrayRecordSource(builder.name, split, int(info.features[label_key].num_classes),
                            sources.array_record_source(builder, split), image_key, label_key)
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
