"""Offline demo segmentation dataset 'hatnet_digit_scenes': real handwritten digits pasted on textures.

Nothing is downloaded: each scene is built from scikit-learn's real digit scans
(`hatnet_jax.data.demos.digits.load_arrays`, 32x32 greyscale). The labels are DERIVED, not annotated by
anyone: a pixel is labelled with the class of the digit pasted there when that digit's (resized) scan
intensity exceeds a threshold. Scenes of the 'train' split use only digits of the digits dataset's
fixed train split, 'test' scenes only its test digits, so no test digit is ever seen in training.

A scene: a canvas of height and width drawn from {64, 72, 80, 88, 96} (so the eval path meets several
sizes), a dark smooth random colour texture with noise, and 2-4 digits, each resized to 20-44 pixels
(bilinear), placed at a random position (they may overlap and be cut by the border; later digits
occlude earlier ones) and alpha-blended in a random bright colour (alpha = intensity / 255).
Everything is a fixed function of (split, scene index): the same on every machine.

Stored like ADE20K, so the same reading path is used: ``image`` (RGB PNG), ``annotation``
(single-channel PNG) and ``file_name``. Stored mask values: 0 = ambiguous digit edge (intensity between
the two thresholds, LOW < v <= HIGH), 1 = background, 2 + d = digit d (v > HIGH). Read with mmseg's
reduce_zero_label like ADE20K (0 -> 255 ignore, k -> k - 1), giving 11 classes:
0 = background, 1 + d = digit d, and 255 = ignore on the ambiguous edges.

Configs: 'full' (default: 3,000 train / 300 test scenes, ~20 s to prepare on a busy CPU) and 'small' (96 / 40, for
tests). Select with ``config.data.dataset = 'digit_scenes'`` or ``'digit_scenes/small'``.
"""
import dataclasses
import functools
import io

import numpy as np

NAME = 'hatnet_digit_scenes'
SIZES = (64, 72, 80, 88, 96)
LOW, HIGH = 48, 128  # intensity thresholds: > HIGH digit class, (LOW, HIGH] ignore
NUM_CLASSES = 11
CLASSES = ('background',) + tuple(f'digit {d}' for d in range(10))
CONFIGS = {'full': (3000, 300), 'small': (96, 40)}
_SPLIT_SEED = {'train': 1, 'test': 2}


def _texture(rng, h, w):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  low = rng.integers(0, 110, size=(4, 4, 3), dtype=np.uint8)
  img = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC)).astype(np.float32)
  img += rng.normal(0, 8, img.shape)
  return img


def make_scene(split, index, digit_images, digit_labels):
  """(image uint8 [h, w, 3], stored mask uint8 [h, w] with the 0/1/2+d coding, placed digits) of one
  scene; placed: [(index into digit_images, class, top, left, size)] in pasting order."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng([_SPLIT_SEED[split], index])
  h, w = int(rng.choice(SIZES)), int(rng.choice(SIZES))
  img = _texture(rng, h, w)
  mask = np.ones((h, w), np.uint8)
  placed = []
  for _ in range(int(rng.integers(2, 5))):
    k = int(rng.integers(len(digit_images)))
    s = int(rng.integers(20, 45))
    digit = np.asarray(Image.fromarray(digit_images[k]).resize((s, s), Image.BILINEAR))
    top, left = int(rng.integers(-s // 4, h - s + s // 4)), int(rng.integers(-s // 4, w - s + s // 4))
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + s, h), min(left + s, w)
    if y1 <= y0 or x1 <= x0:
      continue
    placed.append((k, int(digit_labels[k]), top, left, s))
    v = digit[y0 - top:y1 - top, x0 - left:x1 - left].astype(np.float32)
    colour = rng.uniform(150, 255, 3).astype(np.float32)
    a = (v / 255.0)[..., None]
    img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - a) + colour * a
    m = mask[y0:y1, x0:x1]
    m[v > HIGH] = 2 + int(digit_labels[k])
    m[(v > LOW) & (v <= HIGH)] = 0
  return np.clip(np.round(img), 0, 255).astype(np.uint8), mask, placed


def _png(arr):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, 'PNG')
  return buf.getvalue()


@functools.lru_cache(maxsize=None)
def split_digits(split):
  """The digit scans (and classes) scenes of `split` may use: digits' own train / test split."""
  from hatnet_jax.data.demos import digits  # pylint: disable=g-import-not-at-top
  images, labels, is_test = digits.load_arrays()
  sel = is_test if split == 'test' else ~is_test
  return images[sel], labels[sel]


def iter_examples(split, num):
  images, labels = split_digits(split)
  for i in range(num):
    img, mask, _ = make_scene(split, i, images, labels)
    name = f'{split}_{i:05d}'
    yield name, {'image': _png(img), 'annotation': _png(mask), 'file_name': name}


@functools.lru_cache(maxsize=None)
def builder_class():
  from hatnet_jax.data.tf_host import tfds  # pylint: disable=g-import-not-at-top

  @dataclasses.dataclass
  class SceneConfig(tfds.core.BuilderConfig):
    num_train: int = 3000
    num_test: int = 300

  class HatnetDigitScenes(tfds.core.GeneratorBasedBuilder):
    """Real scikit-learn digits pasted on random textures; per-pixel labels derived from them."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'First version.'}
    BUILDER_CONFIGS = [SceneConfig(name=n, num_train=a, num_test=b) for n, (a, b) in CONFIGS.items()]
    DEFAULT_CONFIG_NAME = 'full'

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description=__doc__,
          features=tfds.features.FeaturesDict({
              'image': tfds.features.Image(shape=(None, None, 3), encoding_format='png'),
              'annotation': tfds.features.Image(shape=(None, None, 1), encoding_format='png'),
              'file_name': tfds.features.Text(),
          }),
          supervised_keys=('image', 'annotation'),
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      c = self.builder_config
      return {'train': self._generate_examples('train', c.num_train),
              'test': self._generate_examples('test', c.num_test)}

    def _generate_examples(self, split, num):
      yield from iter_examples(split, num)

  return HatnetDigitScenes


def builder(config='full', data_dir=None):
  return builder_class()(config=config, data_dir=data_dir)
