"""input_pipeline.py's generated JPEGs as the pipeline's sources: a TFDS dataset in array_record format, an
image folder, and the eval split repeated to measure for longer."""
import io
import os


def make_array_record_dataset(jpegs, data_dir):
  """A TFDS dataset of the given JPEG bytes, prepared in array_record format (as imagenet2012)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class BenchJpegs(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          features=tfds.features.FeaturesDict({
              'image': tfds.features.Image(encoding_format='jpeg'),
              'label': tfds.features.ClassLabel(num_classes=10)}),
          supervised_keys=('image', 'label'))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': self._generate_examples(), 'validation': self._generate_examples()}

    def _generate_examples(self):
      for i, jpeg in enumerate(jpegs):
        yield i, {'image': io.BytesIO(jpeg), 'label': i % 10}  # file object: stored as is

  builder = BenchJpegs(data_dir=data_dir)
  builder.download_and_prepare(file_format='array_record')
  return builder.name


def write_image_folder(jpegs, root):
  """The JPEGs as an image folder (root/{train,validation}/c{label}/{i}.jpg, ten classes)."""
  for split in ('train', 'validation'):
    for i, jpeg in enumerate(jpegs):
      os.makedirs(os.path.join(root, split, f'c{i % 10}'), exist_ok=True)
      with open(os.path.join(root, split, f'c{i % 10}', f'{i}.jpg'), 'wb') as f:
        f.write(jpeg)


def repeat_split(src, times):
  """The eval split repeated (enough batches to measure), as a view of the same source."""
  from hatnet_jax.data import sources  # pylint: disable=g-import-not-at-top

  class Repeated(sources.Source):

    def lookup(self, indices):
      return src.lookup(indices % len(src))

  return Repeated(src.name, src.split, len(src) * times, src.num_classes)
