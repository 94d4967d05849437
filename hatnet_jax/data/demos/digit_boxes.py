"""Offline demo detection dataset 'hatnet_digit_boxes': the digit scenes with one box per pasted digit.

The scenes are `digit_scenes`' (the same function builds them, so the images are the segmentation demo's
pixel for pixel; that dataset is not changed): real scikit-learn digit scans pasted on textured 64-96 px
canvases, 'train' scenes from the digits' train split, 'test' scenes from its test split. The boxes are
DERIVED, not annotated: a digit's box is the extent of its visible ink, the pixels where its resized scan
exceeds digit_scenes.LOW (48 of 255) and no later (occluding) digit's scan does; x2 / y2 are one past the
last ink column / row, so the box covers those pixels. area = the count of those ink pixels (as COCO's
area is the segment's area, not the box's); segmentation = that ink mask as COCO's uncompressed RLE
(column-major run lengths starting with background). A digit without visible ink (fully occluded) gets no
box. label = the digit (10 classes, 'digit 0' .. 'digit 9'), category_id = digit + 1 (1-based like
COCO's), is_crowd 0, image ids 1..N, every box kept (`records.mmdet_keeps` holds for whole pixels).

Stored in the COCO record format (`hatnet_jax.data.detection.records`: PNG images), so one pipeline serves
both. Configs: 'full' (3,000 train / 300 test scenes, seconds to prepare) and 'small' (96 / 40, for
tests); select with config.data.dataset = 'digit_boxes' or 'digit_boxes/small'.
"""
import dataclasses
import functools

import numpy as np

from hatnet_jax.data.demos import digit_scenes

NAME = 'hatnet_digit_boxes'
NUM_CLASSES = 10
CLASSES = tuple(f'digit {d}' for d in range(NUM_CLASSES))
CATEGORY_IDS = tuple(d + 1 for d in range(NUM_CLASSES))
CONFIGS = digit_scenes.CONFIGS  # {'full': (3000, 300), 'small': (96, 40)}
INK = digit_scenes.LOW


def _digit_pixels(digit_image, size):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return np.asarray(Image.fromarray(digit_image).resize((size, size), Image.BILINEAR))


def ink_masks(shape, placed, digit_images):
  """bool [len(placed), h, w]: each placed digit's visible ink (scan > INK, not covered by later ink)."""
  h, w = shape
  masks = np.zeros((len(placed), h, w), bool)
  for j, (k, _, top, left, s) in enumerate(placed):
    v = _digit_pixels(digit_images[k], s)
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + s, h), min(left + s, w)
    masks[j, y0:y1, x0:x1] = v[y0 - top:y1 - top, x0 - left:x1 - left] > INK
  for j in range(len(placed) - 1, 0, -1):  # later digits occlude earlier ones
    masks[:j] &= ~masks[j]
  return masks


def rle(mask):
  """COCO's uncompressed RLE of a bool [h, w] mask: {'size': [h, w], 'counts': column-major runs, first of 0s}."""
  flat = mask.T.reshape(-1).astype(np.int8)
  change = np.nonzero(np.diff(flat))[0] + 1
  bounds = np.concatenate([[0], change, [flat.size]])
  counts = np.diff(bounds).tolist()
  if flat.size and flat[0]:
    counts = [0] + counts
  return {'size': [int(mask.shape[0]), int(mask.shape[1])], 'counts': [int(c) for c in counts]}


def scene_objects(split, index, digit_images, digit_labels):
  """(image uint8 [h, w, 3], objects: dicts of records.OBJECT_KEYS) of one scene."""
  img, _, placed = digit_scenes.make_scene(split, index, digit_images, digit_labels)
  masks = ink_masks(img.shape[:2], placed, digit_images)
  objects = []
  for (_, cls, *_), m in zip(placed, masks):
    if not m.any():
      continue
    ys, xs = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
    box = (float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1))
    objects.append({'id': 0, 'bbox': box, 'label': int(cls), 'category_id': CATEGORY_IDS[int(cls)],
                    'is_crowd': False, 'area': float(m.sum()), 'kept': True, 'segmentation': rle(m)})
  return img, objects


def iter_examples(split, num, first_annotation_id=1):
  """(image_id, record) of scenes 0..num-1 (image ids 1..num, annotation ids counting up)."""
  from hatnet_jax.data.detection import records  # pylint: disable=g-import-not-at-top
  images, labels = digit_scenes.split_digits(split)
  ann_id = first_annotation_id
  for i in range(num):
    img, objects = scene_objects(split, i, images, labels)
    for o in objects:
      o['id'], ann_id = ann_id, ann_id + 1
    png = digit_scenes._png(img)  # pylint: disable=protected-access
    yield i + 1, records.example(png, i + 1, f'{split}_{i:05d}.png', img.shape[0], img.shape[1], objects)


@functools.lru_cache(maxsize=None)
def builder_class():
  from hatnet_jax.data.detection import records  # pylint: disable=g-import-not-at-top
  from hatnet_jax.data.tf_host import tfds  # pylint: disable=g-import-not-at-top

  @dataclasses.dataclass
  class BoxesConfig(tfds.core.BuilderConfig):
    num_train: int = 3000
    num_test: int = 300

  class HatnetDigitBoxes(tfds.core.GeneratorBasedBuilder):
    """Real scikit-learn digits pasted on random textures; one box per digit, derived from its ink."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'First version.'}
    BUILDER_CONFIGS = [BoxesConfig(name=n, num_train=a, num_test=b) for n, (a, b) in CONFIGS.items()]
    DEFAULT_CONFIG_NAME = 'full'

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, description=__doc__, features=records.features('png'),
                                   metadata=tfds.core.MetadataDict(), disable_shuffling=True)

    def _split_generators(self, dl_manager):
      del dl_manager
      c = self.builder_config
      examples = {'train': list(iter_examples('train', c.num_train)),
                  'test': list(iter_examples('test', c.num_test, first_annotation_id=10 ** 6))}
      splits = {}
      for split, rows in examples.items():
        splits[split] = records.split_metadata(
            [(i, ex['file_name'], ex['height'], ex['width'], len(ex['objects']['label']),
              len(ex['objects']['label'])) for i, ex in rows])
      self.info.metadata.update(category_ids=list(CATEGORY_IDS), class_names=list(CLASSES), splits=splits)
      return {split: self._generate_examples(rows) for split, rows in examples.items()}

    def _generate_examples(self, rows):
      yield from rows

  return HatnetDigitBoxes


def builder(config='full', data_dir=None):
  return builder_class()(config=config, data_dir=data_dir)
