"""The detection record: one TFDS example per image, shared by COCO (`coco.py`) and the digit-boxes demo.

Features (TFDS names; ``objects/*`` is a Sequence, one entry per annotation, in the annotation file's order):

  image                 encoded image bytes as stored (COCO: the original JPEG, never re-encoded)
  image_id              int64, the dataset's image id
  file_name             text
  height, width         int64, the original size (checked against the image header when prepared)
  objects/id            int64, the annotation id
  objects/bbox          float32 [4] xyxy in original pixels: COCO's [x, y, w, h] as (x, y, x + w, y + h),
                        as released (not clipped: mmdet clips after resizing, COCO evaluation uses them raw)
  objects/label         int64, contiguous 0..K-1 (mmdet's cat2label: the file's category order; COCO: by id)
  objects/category_id   int64, the dataset's category id
  objects/is_crowd      bool
  objects/area          float32, the annotation's area (COCO evaluation's small/medium/large)
  objects/kept          bool, mmdet 3.3.0 `CocoDataset.parse_data_info` keeps it as an instance (`mmdet_keeps`,
                        decided on the annotation file's float64 numbers when prepared)
  objects/segmentation  text, the annotation's polygons or RLE as JSON ('' when it has none)

Records are stored in ascending image_id order (TFDS `disable_shuffling`, keyed by image_id), so record ``i``
is the ``i``-th image id of the split's metadata (`split_metadata`): the pipelines read sizes and annotation
counts from there without touching the records. TF Examples hold float32 only: boxes and areas are the
annotation file's numbers rounded to float32 (mmdet converts boxes to float32 too).
"""
import json

import numpy as np

OBJECT_KEYS = ('id', 'bbox', 'label', 'category_id', 'is_crowd', 'area', 'kept', 'segmentation')
_FLOAT = ('bbox', 'area')
_BOOL = ('is_crowd', 'kept')
_TEXT = ('segmentation',)


def features(image_format):
  """The TFDS FeaturesDict of a detection record (`image_format`: 'jpeg' or 'png')."""
  from hatnet_jax.data.tf_host import tfds  # pylint: disable=g-import-not-at-top
  scalar = lambda dtype: tfds.features.Tensor(shape=(), dtype=dtype)
  return tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(None, None, 3), encoding_format=image_format),
      'image_id': scalar(np.int64),
      'file_name': tfds.features.Text(),
      'height': scalar(np.int64),
      'width': scalar(np.int64),
      'objects': tfds.features.Sequence({
          'id': scalar(np.int64),
          'bbox': tfds.features.Tensor(shape=(4,), dtype=np.float32),
          'label': scalar(np.int64),
          'category_id': scalar(np.int64),
          'is_crowd': scalar(np.bool_),
          'area': scalar(np.float32),
          'kept': scalar(np.bool_),
          'segmentation': tfds.features.Text(),
      }),
  })


def mmdet_keeps(x, y, w, h, area, width, height, ignore=False):
  """mmdet 3.3.0 `CocoDataset.parse_data_info`: an annotation becomes an instance unless it has an 'ignore'
  flag, does not overlap the image, or has area <= 0, w < 1 or h < 1 (crowd boxes are kept, as ignored
  instances). The category check is the builder's (an unknown category is an error there)."""
  if ignore:
    return False
  inter_w = max(0, min(x + w, width) - max(x, 0))
  inter_h = max(0, min(y + h, height) - max(y, 0))
  if inter_w * inter_h == 0:
    return False
  return not (area <= 0 or w < 1 or h < 1)


def example(image, image_id, file_name, height, width, objects):
  """A TFDS example dict; `objects`: a list of dicts with OBJECT_KEYS (segmentation: JSON text or object)."""
  cols = {}
  for key in OBJECT_KEYS:
    values = [o[key] for o in objects]
    if key in _TEXT:
      cols[key] = [v if isinstance(v, str) else json.dumps(v, separators=(',', ':')) for v in values]
    elif key == 'bbox':
      cols[key] = np.asarray(values, np.float32).reshape(-1, 4)
    elif key in _FLOAT:
      cols[key] = np.asarray(values, np.float32).reshape(-1)
    elif key in _BOOL:
      cols[key] = np.asarray(values, np.bool_).reshape(-1)
    else:
      cols[key] = np.asarray(values, np.int64).reshape(-1)
  return {'image': image, 'image_id': int(image_id), 'file_name': file_name, 'height': int(height),
          'width': int(width), 'objects': cols}


def split_metadata(rows):
  """Per-split metadata from [(image_id, file_name, height, width, num_annotations, num_kept)] in image_id
  order: num_annotations counts every annotation (mmdet's filter_empty_gt looks at those), num_kept those
  that become instances (what a batch holds)."""
  rows = sorted(rows)
  names = ('image_ids', 'file_names', 'heights', 'widths', 'num_annotations', 'num_kept')
  return {n: [r[i] for r in rows] for i, n in enumerate(names)}


# ------------------------------------------------------------------------------------------------
# Parsing the serialized records (TF)
# ------------------------------------------------------------------------------------------------


def _spec(ragged):
  from hatnet_jax.data.tf_host import tf  # pylint: disable=g-import-not-at-top
  seq = (lambda dtype, shape: tf.io.RaggedFeature(dtype)) if ragged else (
      lambda dtype, shape: tf.io.FixedLenSequenceFeature(shape, dtype, allow_missing=True))
  spec = {'image': tf.io.FixedLenFeature([], tf.string),
          'image_id': tf.io.FixedLenFeature([], tf.int64),
          'file_name': tf.io.FixedLenFeature([], tf.string),
          'height': tf.io.FixedLenFeature([], tf.int64),
          'width': tf.io.FixedLenFeature([], tf.int64)}
  for key in OBJECT_KEYS:
    dtype = tf.float32 if key in _FLOAT else tf.string if key in _TEXT else tf.int64
    spec[f'objects/{key}'] = seq(dtype, [4] if key == 'bbox' else [])
  return spec


def parse(serialized, keys=None):
  """One serialized record -> {name: tensor} (objects/bbox float32 [n, 4], other objects/* [n]; booleans
  as bool). `keys`: only these features (e.g. without 'image')."""
  from hatnet_jax.data.tf_host import tf  # pylint: disable=g-import-not-at-top
  spec = _spec(ragged=False)
  if keys is not None:
    spec = {k: spec[k] for k in keys}
  ex = tf.io.parse_single_example(serialized, spec)
  for key in _BOOL:
    if f'objects/{key}' in ex:
      ex[f'objects/{key}'] = ex[f'objects/{key}'] != 0
  return ex


def parse_numpy(serialized_list, keys=None):
  """Eager: serialized records -> a list of {name: numpy value} (one dict per record, bytes as bytes)."""
  from hatnet_jax.data.tf_host import tf  # pylint: disable=g-import-not-at-top
  if not len(serialized_list):
    return []
  spec = _spec(ragged=True)
  if keys is not None:
    spec = {k: spec[k] for k in keys}
  ex = tf.io.parse_example(tf.constant(list(serialized_list), tf.string), spec)
  cols = {}
  for key, value in ex.items():
    cols[key] = value.to_list() if isinstance(value, tf.RaggedTensor) else value.numpy().tolist()
  out = []
  for i in range(len(serialized_list)):
    row = {}
    for key, col in cols.items():
      v = col[i]
      short = key.split('/')[-1]
      if key == 'objects/bbox':
        v = np.asarray(v, np.float32).reshape(-1, 4)
      elif key.startswith('objects/'):
        v = (np.asarray(v, np.float32) if short in _FLOAT else np.asarray(v, np.bool_) if short in _BOOL
             else [s.decode('utf-8') for s in v] if short in _TEXT else np.asarray(v, np.int64))
      elif key == 'file_name':
        v = v.decode('utf-8')
      row[key] = v
    out.append(row)
  return out
