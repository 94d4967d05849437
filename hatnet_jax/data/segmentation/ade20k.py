"""ADE20K (the ADEChallengeData2016 scene-parsing release) as a TFDS builder 'ade20k', prepared offline.

20,210 train / 2,000 validation images, 150 classes. The manual dir is either the unpacked release::

    <manual_dir>/images/training/ADE_train_00000001.jpg ...     (also accepted: <manual_dir>/ADEChallengeData2016/...)
    <manual_dir>/images/validation/ADE_val_00000001.jpg ...
    <manual_dir>/annotations/training/ADE_train_00000001.png ...
    <manual_dir>/annotations/validation/ADE_val_00000001.png ...

or a directory holding ``ADEChallengeData2016.zip`` as downloaded from
http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip (not unpacked).

Features: ``image`` (the original JPEG bytes, not re-encoded), ``annotation`` (the original PNG bytes:
uint8, one channel, 0 = "other", 1..150 = the classes), ``file_name`` (the stem). Splits 'train' and
'validation'. Prepared once with ``download_and_prepare(file_format='array_record')``::

    python -m hatnet_jax.tools.prepare_data --dataset=ade20k --manual_dir=/data/ADEChallengeData2016 \
        [--data_dir=/data/tfds]

Generation validates every pair: missing directories, an image without annotation (or vice versa),
a mask whose size differs from its image's, a mask that is not single-channel, or label values outside
[0, 150] raise an error naming the file. Labels are stored as released; the pipeline applies mmseg's
``reduce_zero_label`` when reading (0 -> 255 = ignore, k -> k - 1), giving 150 classes 0..149.
"""
import functools
import io
import os
import zipfile

import numpy as np

NAME = 'ade20k'
NUM_CLASSES = 150
ZIP_NAME = 'ADEChallengeData2016.zip'
ROOT_NAME = 'ADEChallengeData2016'
SPLIT_DIRS = {'train': 'training', 'validation': 'validation'}
SPLIT_SIZES = {'train': 20210, 'validation': 2000}
IMAGE_EXTS = ('.jpg', '.jpeg', '.png')

# mmseg's ADE20KDataset.CLASSES (label k of the reduced labels; stored value k + 1).
CLASSES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane', 'grass',
    'cabinet', 'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain', 'chair',
    'car', 'water', 'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field', 'armchair',
    'seat', 'fence', 'desk', 'rock', 'wardrobe', 'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box',
    'column', 'signboard', 'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace',
    'refrigerator', 'grandstand', 'path', 'stairs', 'runway', 'case', 'pool table', 'pillow',
    'screen door', 'stairway', 'river', 'bridge', 'bookcase', 'blind', 'coffee table', 'toilet',
    'flower', 'book', 'hill', 'bench', 'countertop', 'stove', 'palm', 'kitchen island', 'computer',
    'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus', 'towel', 'light', 'truck', 'tower',
    'chandelier', 'awning', 'streetlight', 'booth', 'television receiver', 'airplane', 'dirt track',
    'apparel', 'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet', 'poster',
    'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer', 'plaything',
    'swimming pool', 'stool', 'barrel', 'basket', 'waterfall', 'tent', 'bag', 'minibike', 'cradle',
    'oven', 'ball', 'food', 'step', 'tank', 'trade name', 'microwave', 'pot', 'animal', 'bicycle',
    'lake', 'dishwasher', 'screen', 'blanket', 'sculpture', 'hood', 'sconce', 'vase', 'traffic light',
    'tray', 'ashcan', 'fan', 'pier', 'crt screen', 'plate', 'monitor', 'bulletin board', 'shower',
    'radiator', 'glass', 'clock', 'flag')
assert len(CLASSES) == NUM_CLASSES, len(CLASSES)

LAYOUT = ('images/training/*.jpg, images/validation/*.jpg, annotations/training/*.png, '
          'annotations/validation/*.png (same file stems), or the ADEChallengeData2016.zip itself')


class LayoutError(FileNotFoundError):
  pass


# ------------------------------------------------------------------------------------------------
# Pair scanning and validation (shared with the 'seg_folder' source)
# ------------------------------------------------------------------------------------------------


def _stems(names, exts):
  out = {}
  for n in names:
    stem, ext = os.path.splitext(n)
    if ext.lower() in exts:
      out[stem] = n
  return out


def match_pairs(image_names, mask_names, where):
  """Sorted [(stem, image_name, mask_name)]; an image without mask (or vice versa) raises."""
  images = _stems(image_names, IMAGE_EXTS)
  masks = _stems(mask_names, ('.png',))
  for stem, name in sorted(images.items()):
    if stem not in masks:
      raise LayoutError(f'Image {os.path.join(where[0], name)} has no annotation '
                        f'{os.path.join(where[1], stem + ".png")} ({where[2]})')
  for stem, name in sorted(masks.items()):
    if stem not in images:
      raise LayoutError(f'Annotation {os.path.join(where[1], name)} has no image '
                        f'{os.path.join(where[0], stem + ".jpg")} ({where[2]})')
  return [(s, images[s], masks[s]) for s in sorted(images)]


def scan_dir(root, split_dir, what):
  """Pairs of <root>/images/<split_dir>/* and <root>/annotations/<split_dir>/*.png, validated."""
  img_dir = os.path.join(root, 'images', split_dir)
  ann_dir = os.path.join(root, 'annotations', split_dir)
  missing = [d for d in (img_dir, ann_dir) if not os.path.isdir(d)]
  if missing:
    raise LayoutError(f'{what}: missing director{"ies" if len(missing) > 1 else "y"} '
                      f'{", ".join(missing)}. Expected layout under {root}: {what_layout(what)}')
  pairs = match_pairs(os.listdir(img_dir), os.listdir(ann_dir), (img_dir, ann_dir, what))
  if not pairs:
    raise LayoutError(f'{what}: no images in {img_dir}')
  return [(s, os.path.join(img_dir, i), os.path.join(ann_dir, m)) for s, i, m in pairs]


def what_layout(what):
  if what.startswith(NAME):
    return LAYOUT
  return ('images/<split>/*.jpg|png and annotations/<split>/*.png with the same file stems '
          '(single-channel uint8 masks)')


def image_size(data):
  """(height, width) from the header of encoded image bytes or a path (PIL reads only the header)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(data if isinstance(data, str) else io.BytesIO(data)) as im:
    return im.size[1], im.size[0]


def check_pair(image_bytes, mask_bytes, name, max_label=None):
  """Validates one pair: decodable mask, single channel, same size as the image, labels in range."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    ih, iw = image_size(image_bytes)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'Cannot read the image of {name}: {e}') from e
  try:
    with Image.open(io.BytesIO(mask_bytes)) as im:
      mode = im.mode
      mask = np.asarray(im)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'Cannot read the annotation of {name}: {e}') from e
  if mask.ndim != 2 or mode != 'L':
    raise ValueError(f'Annotation of {name} is not a single-channel uint8 PNG (mode {mode}, shape '
                     f'{mask.shape})')
  if mask.shape != (ih, iw):
    raise ValueError(f'Annotation of {name} has size {mask.shape[1]}x{mask.shape[0]} (WxH) but its '
                     f'image is {iw}x{ih}')
  if max_label is not None:
    bad = np.unique(mask[mask > max_label])
    if bad.size:
      raise ValueError(f'Annotation of {name} has label values {bad.tolist()} outside '
                       f'[0, {max_label}]')


class _Zip:
  """Pairs inside ADEChallengeData2016.zip (members ADEChallengeData2016/images/training/...)."""

  def __init__(self, path):
    self.path = path
    self.zf = zipfile.ZipFile(path)
    self.names = self.zf.namelist()

  def pairs(self, split_dir):
    def members(kind):
      prefixes = [f'{ROOT_NAME}/{kind}/{split_dir}/', f'{kind}/{split_dir}/']
      out = {}
      for n in self.names:
        for p in prefixes:
          if n.startswith(p) and len(n) > len(p) and '/' not in n[len(p):]:
            out[n[len(p):]] = n
      return out
    imgs, anns = members('images'), members('annotations')
    if not imgs or not anns:
      raise LayoutError(f'ade20k: {self.path} has no {ROOT_NAME}/images/{split_dir}/ or '
                        f'{ROOT_NAME}/annotations/{split_dir}/ members. Expected layout: {LAYOUT}')
    pairs = match_pairs(list(imgs), list(anns), (f'{self.path}:images/{split_dir}',
                                                 f'{self.path}:annotations/{split_dir}', 'ade20k'))
    return [(s, imgs[i], anns[m]) for s, i, m in pairs]

  def read(self, member):
    return self.zf.read(member)


def locate(manual_dir):
  """The unpacked root (a str) or a `_Zip` for an ADE20K manual dir; raises naming the layout."""
  if not manual_dir or not os.path.exists(manual_dir):
    raise LayoutError(f'ade20k: manual dir {manual_dir!r} does not exist. Expected there: {LAYOUT}')
  if os.path.isfile(manual_dir) and manual_dir.endswith('.zip'):
    return _Zip(manual_dir)
  for root in (manual_dir, os.path.join(manual_dir, ROOT_NAME)):
    if os.path.isdir(os.path.join(root, 'images')) or os.path.isdir(os.path.join(root, 'annotations')):
      return root
  zpath = os.path.join(manual_dir, ZIP_NAME)
  if os.path.isfile(zpath):
    return _Zip(zpath)
  raise LayoutError(f'ade20k: {manual_dir} holds neither images/ + annotations/ nor {ZIP_NAME}. '
                    f'Expected layout: {LAYOUT}')


def iter_examples(manual_dir, split):
  """(stem, {'image', 'annotation', 'file_name'}) of one split, validated, in file-name order."""
  src = locate(manual_dir)
  split_dir = SPLIT_DIRS[split]
  if isinstance(src, _Zip):
    pairs = src.pairs(split_dir)
    read = src.read
    where = lambda m: f'{src.path}:{m}'
  else:
    pairs = scan_dir(src, split_dir, f'{NAME} {split}')
    read = lambda p: open(p, 'rb').read()
    where = lambda p: p
  for stem, img_ref, ann_ref in pairs:
    image, mask = read(img_ref), read(ann_ref)
    check_pair(image, mask, f'{where(img_ref)} / {where(ann_ref)}', max_label=NUM_CLASSES)
    yield stem, {'image': image, 'annotation': mask, 'file_name': stem}


# ------------------------------------------------------------------------------------------------
# TFDS builder
# ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def builder_class():
  """Defines the TFDS builder on first use (keeps tensorflow out of `import hatnet_jax`)."""
  from hatnet_jax.data.tf_host import tfds  # pylint: disable=g-import-not-at-top

  class Ade20k(tfds.core.GeneratorBasedBuilder):
    """ADEChallengeData2016 scene parsing (150 classes), from a manual dir."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'First version: original JPEG/PNG bytes of ADEChallengeData2016.'}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f'Download {ZIP_NAME} from http://data.csail.mit.edu/places/ADEchallenge/{ZIP_NAME} and put it '
        f'(or its unpacked {ROOT_NAME} directory) in the manual dir. Layout: {LAYOUT}')

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description=__doc__,
          features=tfds.features.FeaturesDict({
              'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
              'annotation': tfds.features.Image(shape=(None, None, 1), encoding_format='png'),
              'file_name': tfds.features.Text(),
          }),
          supervised_keys=('image', 'annotation'),
          homepage='http://sceneparsing.csail.mit.edu/',
      )

    def _split_generators(self, dl_manager):
      manual = str(dl_manager.manual_dir)
      locate(manual)  # the layout error before anything else
      return {split: self._generate_examples(manual, split) for split in SPLIT_DIRS}

    def _generate_examples(self, manual, split):
      yield from iter_examples(manual, split)

  return Ade20k


def builder(data_dir=None):
  return builder_class()(data_dir=data_dir)


def prepare(manual_dir, data_dir=None):
  """Prepares ADE20K once (array_record) from `manual_dir`; returns the builder."""
  from hatnet_jax.data.tf_host import tfds  # pylint: disable=g-import-not-at-top
  b = builder(data_dir)
  if not b.is_prepared():
    locate(manual_dir)
    b.download_and_prepare(file_format='array_record',
                           download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return b
