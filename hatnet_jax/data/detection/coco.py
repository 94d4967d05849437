"""COCO 2017 object detection as a TFDS builder 'hatnet_coco_detection', prepared offline from a manual dir.

118,287 train / 5,000 validation images, 80 categories. The manual dir holds the official downloads,
unpacked or as zips side by side (`coco_layout.LAYOUT`). Prepared once in array_record::

    python -m hatnet_jax.tools.prepare_data --dataset=coco --manual_dir=/data/coco [--data_dir=/data/tfds]

Each image is one record (`records`: original JPEG bytes, image_id, file_name, size, and every annotation
of the image in the file's order), records in image_id order. Categories: contiguous labels 0..79 in the
order the file lists them (mmdet's cat2label; COCO's file lists them by id); the ids and names go into the
dataset's metadata with each split's per-image sizes and annotation counts (`records.split_metadata`).

Checks, each failing with one message naming the file (prepared data is never silently different):
the layout (what was expected, what the directory holds); every image listed in an annotation file exists
(checked for all images before any is read); an annotation's image_id is listed in 'images'; its
category_id is listed in 'categories'; its box lies inside the image up to BOX_TOLERANCE pixels (COCO's
polygon-derived boxes exceed the border by under a pixel; such boxes are stored as released, mmdet clips
them after resizing; more than 2 px means the annotation does not belong to this image); the image's
header size equals the annotation file's height and width. Annotations mmdet 3.3.0 does not turn into
instances (no overlap with the image, area <= 0, w < 1 or h < 1: `records.mmdet_keeps`) are counted in a
warning and stored with kept=False: the training pipeline skips them as mmdet does, COCO evaluation still
sees them (it reads every annotation of the file).
"""
import dataclasses
import functools
import io
import json
import logging
from typing import Any, Dict, List

from hatnet_jax.data.detection import coco_layout
from hatnet_jax.data.detection import records

NAME = 'hatnet_coco_detection'
BOX_TOLERANCE = 2.0  # pixels a box may extend beyond the image before it is an error
SPLIT_SIZES = {'train': 118287, 'validation': 5000}


class AnnotationError(ValueError):
  """An annotation file that does not describe its images; the message names the file and the entry."""


@dataclasses.dataclass
class SplitIndex:
  """One split's validated annotation file: categories [(id, name)] in the file's order, images (dicts) by id, each
  image's annotations (dicts, the file's order), cat2label, and the count of annotations mmdet skips."""
  split: str
  where: str
  categories: List[Any]
  images: List[Dict[str, Any]]
  annotations: Dict[int, List[Dict[str, Any]]]
  cat2label: Dict[int, int]
  num_skipped: int = 0

  def metadata(self):
    rows = []
    for im in self.images:
      anns = self.annotations.get(im['id'], [])
      rows.append((im['id'], im['file_name'], im['height'], im['width'], len(anns),
                   sum(bool(a['_kept']) for a in anns)))
    return records.split_metadata(rows)


def _require(data, key, where, what):
  if key not in data:
    raise AnnotationError(f'{where}: {what} has no {key!r}. Use the official instances_*2017.json files')
  return data[key]


def index_split(data, split, where):
  """Validates a parsed instances_*.json (`data`) of `split`; returns a SplitIndex. `where`: its path."""
  if not isinstance(data, dict):
    raise AnnotationError(f'{where}: not a COCO instances file (a JSON object with images, annotations, '
                          f'categories)')
  # mmdet's cat2label: labels in the order the file lists its categories (COCO's file lists them by id).
  cats = [(int(c['id']), str(c['name'])) for c in _require(data, 'categories', where, 'the file')]
  if len({c for c, _ in cats}) != len(cats):
    raise AnnotationError(f'{where}: category ids are not unique')
  cat2label = {c: i for i, (c, _) in enumerate(cats)}
  images = {}
  for im in _require(data, 'images', where, 'the file'):
    for key in ('id', 'file_name', 'height', 'width'):
      _require(im, key, where, f'image {im.get("id", "?")}')
    if int(im['id']) in images:
      raise AnnotationError(f'{where}: image id {im["id"]} is listed twice')
    images[int(im['id'])] = im
  per_image, skipped = {}, []
  for ann in _require(data, 'annotations', where, 'the file'):
    aid = ann.get('id', '?')
    for key in ('image_id', 'category_id', 'bbox', 'area'):
      _require(ann, key, where, f'annotation {aid}')
    im = images.get(int(ann['image_id']))
    if im is None:
      raise AnnotationError(f'{where}: annotation {aid} refers to image_id {ann["image_id"]}, which is not in '
                            f'its "images" list; the annotation file is damaged or belongs to other images')
    if int(ann['category_id']) not in cat2label:
      raise AnnotationError(f'{where}: annotation {aid} (image {im["file_name"]}) has category_id '
                            f'{ann["category_id"]}, which is not in its "categories" list')
    x, y, w, h = (float(v) for v in ann['bbox'])
    width, height = float(im['width']), float(im['height'])
    beyond = max(-x, -y, x + w - width, y + h - height)
    if beyond > BOX_TOLERANCE:
      raise AnnotationError(
          f'{where}: annotation {aid} of image {im["file_name"]} ({im["width"]}x{im["height"]}, WxH) has bbox '
          f'{ann["bbox"]} (x, y, w, h), {beyond:.2f} px outside the image (tolerance {BOX_TOLERANCE:g} px): the '
          f'annotation does not match the image; fix the file or its image size')
    ann['_kept'] = records.mmdet_keeps(x, y, w, h, float(ann['area']), width, height,
                                       bool(ann.get('ignore', False)))
    if not ann['_kept']:
      skipped.append(aid)
    per_image.setdefault(int(ann['image_id']), []).append(ann)
  if skipped:
    logging.warning('coco %s: %d annotations of %s are not training instances for mmdet (no overlap with the '
                    'image, area <= 0, w < 1 or h < 1), stored with kept=False and skipped in training as '
                    'mmdet skips them (annotation ids %s%s)', split, len(skipped), where, skipped[:10],
                    ' ...' if len(skipped) > 10 else '')
  return SplitIndex(split, where, cats, [images[i] for i in sorted(images)], per_image, cat2label,
                    len(skipped))


def load_split(layout, split):
  """Reads, parses and validates one split's annotation file; checks that every listed image exists."""
  where = layout.annotation_path(split)
  try:
    data = json.loads(layout.read_annotations(split))
  except ValueError as e:
    raise AnnotationError(f'{where}: not valid JSON ({e}); download it again') from e
  index = index_split(data, split, where)
  files = layout.images[split]
  present = files.names()
  missing = [im['file_name'] for im in index.images if im['file_name'] not in present]
  if missing:
    first = next(im['id'] for im in index.images if im['file_name'] == missing[0])
    raise coco_layout.LayoutError(
        f'coco {split}: {where} lists {len(missing)} image(s) missing from {files.path}, e.g. '
        f'{files.where(missing[0])} (image id {first}). '
        f'Unpack the whole {coco_layout.SPLITS[split]}.zip (or put the zip itself) in {layout.manual_dir}')
  return index


def _image_size(data):
  """(height, width) of the stored pixel grid and the EXIF orientation tag (1 when absent)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(io.BytesIO(data)) as im:
    return (im.size[1], im.size[0]), int(im.getexif().get(0x0112, 1) or 1)


def iter_examples(layout, index):
  """(image_id, record) of every image of the split, in image_id order; image sizes checked."""
  files = layout.images[index.split]
  for im in index.images:
    name = im['file_name']
    data = files.read(name)
    try:
      size, orientation = _image_size(data)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'coco {index.split}: cannot read the image {files.where(name)}: {e}') from e
    if size != (int(im['height']), int(im['width'])):
      exif = (f' (its EXIF orientation {orientation} turns it by 90 degrees when displayed; the pipeline reads '
              f'the stored pixel grid, as the annotations must be)' if orientation in (5, 6, 7, 8) else '')
      raise AnnotationError(f'coco {index.split}: image {files.where(name)} is {size[1]}x{size[0]} (WxH){exif} '
                            f'but {index.where} says {im["width"]}x{im["height"]}: the annotations do not belong '
                            f'to this file; use the original images')
    objects = []
    for ann in index.annotations.get(int(im['id']), []):
      x, y, w, h = (float(v) for v in ann['bbox'])
      objects.append({'id': int(ann.get('id', 0)), 'bbox': (x, y, x + w, y + h),
                      'label': index.cat2label[int(ann['category_id'])],
                      'category_id': int(ann['category_id']), 'is_crowd': bool(ann.get('iscrowd', 0)),
                      'area': float(ann['area']), 'kept': bool(ann['_kept']),
                      'segmentation': ann.get('segmentation') or ''})
    yield int(im['id']), records.example(data, im['id'], name, im['height'], im['width'], objects)


@functools.lru_cache(maxsize=None)
def builder_class():
  """Defines the TFDS builder on first use (keeps tensorflow out of `import hatnet_jax`)."""
  from hatnet_jax.data.tf_host import tfds  # pylint: disable=g-import-not-at-top

  class HatnetCocoDetection(tfds.core.GeneratorBasedBuilder):
    """COCO 2017 instances (80 categories, boxes, crowd flags, areas, segmentations), from a manual dir."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'First version: original JPEG bytes and every annotation of COCO 2017.'}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f'Put the COCO 2017 downloads in the manual dir. Layout: {coco_layout.LAYOUT}'

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, description=__doc__, features=records.features('jpeg'),
                                   metadata=tfds.core.MetadataDict(), disable_shuffling=True,
                                   homepage='https://cocodataset.org/')

    def _split_generators(self, dl_manager):
      layout = coco_layout.locate(str(dl_manager.manual_dir))
      indexes = {split: load_split(layout, split) for split in coco_layout.SPLITS}  # every check first
      cats = indexes['train'].categories
      if indexes['validation'].categories != cats:
        raise AnnotationError(f'{indexes["validation"].where} and {indexes["train"].where} list different '
                              f'categories; use the two files of one release')
      self.info.metadata.update(category_ids=[c for c, _ in cats], class_names=[n for _, n in cats],
                                splits={s: idx.metadata() for s, idx in indexes.items()})
      return {split: self._generate_examples(layout, idx) for split, idx in indexes.items()}

    def _generate_examples(self, layout, index):
      yield from iter_examples(layout, index)

  return HatnetCocoDetection


def builder(data_dir=None):
  return builder_class()(data_dir=data_dir)
