"""Detection datasets as random-access sources of records (`records`), their facts and ground truth.

`config.data.dataset` selects:

* ``'coco'``: COCO 2017 (80 classes), TFDS builder `coco.py` prepared once (array_record) from
  ``config.data.manual_dir``. A single process prepares it on first use; multi-process runs need it prepared
  before (`python -m hatnet_jax.tools.prepare_data --dataset=coco --manual_dir=...`).
* ``'digit_boxes'`` / ``'digit_boxes/small'``: the offline demo (`hatnet_jax.data.demos.digit_boxes`, 10
  classes, boxes derived from real digit scans), prepared on first use in seconds.

Training images follow mmdet 3.3.0's `filter_cfg=dict(filter_empty_gt=True, min_size=32)` (CocoDataset.
filter_data): an image is trained on only if it has at least one annotation (any: crowd or not, kept or
not, as mmdet's cat_img_map counts them) and min(width, height) >= 32 (`config.data.filter_empty_gt`,
`config.data.min_size`). Evaluation uses every image of its split (mmdet's test_mode).
"""
import dataclasses
import logging
from typing import Any, Optional, Tuple

import numpy as np

from hatnet_jax.data import sources
from hatnet_jax.data.detection import records
from hatnet_jax.data.tf_host import tf

COCO = 'coco'
DIGIT_BOXES = 'digit_boxes'


@dataclasses.dataclass(frozen=True)
class DetDatasetInfo:
  """num_train counts the training images after mmdet's filter (`train_indices`); category_ids[label] is
  the dataset's category id of a contiguous label (for COCO results JSON)."""
  name: str
  num_classes: int
  num_train: int
  num_eval: int
  class_names: Tuple[str, ...]
  category_ids: Tuple[int, ...]
  train_split: str = 'train'
  eval_split: str = 'validation'


def _kind(d):
  name = str(d.dataset)
  if name == COCO or name in (DIGIT_BOXES, DIGIT_BOXES + '/small', DIGIT_BOXES + '/full'):
    return name.split('/')[0]
  raise ValueError(f"Unknown detection dataset {name!r}: use 'coco', 'digit_boxes' or 'digit_boxes/small' "
                   f"(config.data.dataset)")


def get_builder(d):
  if _kind(d) == COCO:
    from hatnet_jax.data.detection import coco  # pylint: disable=g-import-not-at-top
    return coco.builder(data_dir=d.get('data_dir'))
  from hatnet_jax.data.demos import digit_boxes  # pylint: disable=g-import-not-at-top
  parts = str(d.dataset).split('/')
  return digit_boxes.builder(parts[1] if len(parts) > 1 else 'full', data_dir=d.get('data_dir'))


def ensure_prepared(d, builder):
  if builder.is_prepared():
    return
  if _kind(d) == COCO:
    from hatnet_jax.data.detection import coco_layout  # pylint: disable=g-import-not-at-top
    manual = d.get('manual_dir')
    coco_layout.locate(manual)  # the layout error (naming the path and the layout) before anything else
    if sources.process_count() > 1:
      raise RuntimeError(f'coco is not prepared in {builder.data_dir_root}; prepare it once from one process: '
                         f'{sources.prepare_command(d, COCO)}')
    logging.info('Preparing coco from %s in %s (array_record, ~30 min)', manual, builder.data_dir_root)
    sources.prepare_builder(builder, manual_dir=manual)
    return
  sources.prepare_builder(builder)


_BUILDERS = {}


def _prepared(d):
  """The prepared builder of config.data (kept per dataset and data dir: its metadata is read once)."""
  key = (str(d.dataset), str(d.get('data_dir')))
  if key not in _BUILDERS:
    builder = get_builder(d)
    ensure_prepared(d, builder)
    _BUILDERS[key] = builder
  return _BUILDERS[key]


def _eval_split(d, splits):
  split = d.get('eval_split', 'validation')
  if split not in splits and split == 'validation' and 'test' in splits:
    return 'test'
  return split


def _check_split(builder, split):
  if split not in builder.info.splits:
    raise ValueError(f'No split {split!r} in {builder.name}: it has {list(builder.info.splits.keys())} '
                     f'(config.data.train_split / eval_split)')


@dataclasses.dataclass
class DetSource:
  """Random access to one split: `lookup(int64 [n]) -> serialized records [n]` (a TF function), `read`
  (eager, parsed), `describe(index)`; `meta` holds every record's image_id, file_name, height, width,
  num_annotations and num_kept as numpy arrays (from the dataset's metadata: no record is read)."""
  name: str
  split: str
  num_examples: int
  meta: dict
  data_source: Any = None
  serialized: Optional[np.ndarray] = None  # in memory (config.data.cache)

  def __len__(self):
    return self.num_examples

  def _read(self, indices):
    keys = [int(i) for i in indices]
    return np.array(list(self.data_source.__getitems__(keys)), dtype=object)

  def lookup(self, indices):
    if self.serialized is not None:
      cache = self.__dict__.setdefault('_tensor', [])
      if not cache:
        with tf.init_scope():
          cache.append(tf.constant(self.serialized))
      return tf.gather(cache[0], indices)
    out = tf.numpy_function(self._read, [indices], tf.string, stateful=False)
    out.set_shape([None])
    return out

  def serialized_numpy(self, indices):
    if self.serialized is not None:
      return [self.serialized[int(i)] for i in indices]
    return list(self._read(indices)) if len(indices) else []

  def read(self, indices, keys=None):
    """Parsed records (dicts of numpy values, `records.parse_numpy`) of `indices`."""
    return records.parse_numpy(self.serialized_numpy(indices), keys)

  def describe(self, index):
    i = int(index)
    return (f'{self.meta["file_names"][i]} (image_id {int(self.meta["image_ids"][i])}, record {i} of split '
            f'{self.split!r} of {self.name})')

  def to_memory(self, chunk=256):
    if self.serialized is not None:
      return self
    rows = []
    for start in range(0, self.num_examples, chunk):
      rows.extend(self.serialized_numpy(range(start, min(start + chunk, self.num_examples))))
    return dataclasses.replace(self, data_source=None, serialized=np.array(rows, dtype=object))


_MEMORY = {}


_META = {}


def _split_meta(builder, split):
  key = (builder.name, str(builder.data_dir), split)
  if key not in _META:
    meta = builder.info.metadata['splits'][split]
    _META[key] = {k: np.asarray(v, np.int64) for k, v in meta.items() if k != 'file_names'}
    _META[key]['file_names'] = list(meta['file_names'])
  return _META[key]


def open_split(d, split, cache=None) -> DetSource:
  builder = _prepared(d)
  _check_split(builder, split)
  data = sources.array_record_source(builder, split)
  src = DetSource(builder.name, split, len(data), _split_meta(builder, split), data_source=data)
  if src.num_examples == 0:
    raise ValueError(f'Split {split!r} of {src.name} is empty')
  if len(src.meta['image_ids']) != src.num_examples:
    raise RuntimeError(f'{builder.name} in {builder.data_dir}: the metadata of split {split!r} lists '
                       f'{len(src.meta["image_ids"])} images but the split holds {src.num_examples} records; '
                       f'prepare it again')
  if cache if cache is not None else bool(d.get('cache', False)):
    key = (builder.name, str(builder.data_dir), split)
    if key not in _MEMORY:
      _MEMORY[key] = src.to_memory()
    src = _MEMORY[key]
  return src


def train_indices(meta, d):
  """Record indices mmdet 3.3.0 trains on (CocoDataset.filter_data with filter_empty_gt and min_size): at
  least one annotation of the image (when config.data.filter_empty_gt) and min(h, w) >= config.data.min_size."""
  keep = np.minimum(meta['heights'], meta['widths']) >= int(d.get('min_size', 32))
  if bool(d.get('filter_empty_gt', True)):
    keep &= meta['num_annotations'] > 0
  return np.nonzero(keep)[0].astype(np.int64)


def dataset_info(d) -> DetDatasetInfo:
  """(name, num_classes, num_train (after the training filter), num_eval, class_names, category_ids, splits)."""
  kind = _kind(d)
  builder = _prepared(d)
  eval_split = _eval_split(d, list(builder.info.splits.keys()))
  for split in (d.train_split, eval_split):
    _check_split(builder, split)
  meta = builder.info.metadata
  names = tuple(str(n) for n in meta['class_names'])
  num_train = len(train_indices(_split_meta(builder, d.train_split), d))
  num_eval = int(builder.info.splits[eval_split].num_examples)
  return DetDatasetInfo(kind, len(names), num_train, num_eval, names,
                        tuple(int(c) for c in meta['category_ids']), str(d.train_split), eval_split)


_GROUND_TRUTH = {}


def ground_truth(d, split=None, chunk=256):
  """The split's ground truth as COCO evaluation sees it, one dict per image in record (image_id) order:
  image_id, orig_size (h, w), boxes float32 [n, 4] xyxy in original pixels, labels int64 [n] (contiguous),
  is_crowd bool [n], area float32 [n], segmentation [n] (the COCO polygons or RLE as JSON text, '' where
  none; mask AP reads them): every annotation, also those training skips (kept=False), as the
  official evaluation reads the whole annotation file. Read once per process and split."""
  split = split or dataset_info(d).eval_split
  src = open_split(d, split, cache=False)
  key = (src.name, str(d.get('data_dir')), split)
  if key not in _GROUND_TRUTH:
    wanted = ['image_id', 'height', 'width'] + [f'objects/{k}' for k in ('bbox', 'label', 'is_crowd', 'area',
                                                                                  'segmentation')]
    out = []
    for start in range(0, len(src), chunk):
      for r in src.read(range(start, min(start + chunk, len(src))), keys=wanted):
        out.append({'image_id': int(r['image_id']), 'orig_size': (int(r['height']), int(r['width'])),
                    'boxes': r['objects/bbox'], 'labels': r['objects/label'],
                    'is_crowd': r['objects/is_crowd'], 'area': r['objects/area'],
                    'segmentation': r['objects/segmentation']})
    _GROUND_TRUTH[key] = out
  return _GROUND_TRUTH[key]
