"""The demo dataset: scikit-learn's handwritten digits as a TFDS dataset builder (no download).

1,797 real 8x8 greyscale scans (UCI "Optical Recognition of Handwritten Digits", 17 grey levels), 10
classes. Each image is scaled to 0..255 and upscaled to 32x32 with PIL bicubic, stored as a 1-channel
PNG (the pipeline decodes it to RGB). Fixed split, the same on every machine and scikit-learn version:
within each class, in dataset order, every 5th image (ranks 4, 9, 14, ...) is 'test', the rest 'train'
-> 1,442 train / 355 test.

Goes through exactly the same TFDS path as ImageNet: `download_and_prepare(file_format='array_record')`
then a random-access data source. `hatnet_jax.data` prepares it on first use (about a second).
"""
import functools

import numpy as np

NAME = 'hatnet_digits'
IMAGE_SIZE = 32
TEST_EVERY = 5


def load_arrays(image_size=IMAGE_SIZE):
  """(images uint8 [N, S, S], labels int64 [N], is_test bool [N]) from scikit-learn's copy."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  up = np.stack([np.asarray(Image.fromarray(im).resize((image_size, image_size), Image.BICUBIC))
                 for im in images])
  labels = digits.target.astype(np.int64)
  rank = np.zeros(len(labels), np.int64)
  for c in range(10):
    idx = np.nonzero(labels == c)[0]
    rank[idx] = np.arange(len(idx))
  is_test = rank % TEST_EVERY == TEST_EVERY - 1
  return up, labels, is_test


@functools.lru_cache(maxsize=None)
def builder_class():
  """Defines the TFDS builder class on first use (keeps tensorflow out of `import hatnet_jax`)."""
  from hatnet_jax.data.tf_host import tfds  # pylint: disable=g-import-not-at-top

  class HatnetDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn digits, upscaled to 32x32, fixed train/test split."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'First version.'}

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description=__doc__,
          features=tfds.features.FeaturesDict({
              'image': tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 1)),
              'label': tfds.features.ClassLabel(names=[str(i) for i in range(10)]),
          }),
          supervised_keys=('image', 'label'),
          homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset',
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': self._generate_examples(False), 'test': self._generate_examples(True)}

    def _generate_examples(self, test):
      images, labels, is_test = load_arrays()
      for i in np.nonzero(is_test == test)[0]:
        yield int(i), {'image': images[i][..., None], 'label': int(labels[i])}

  return HatnetDigits


def builder(data_dir=None):
  return builder_class()(data_dir=data_dir)
