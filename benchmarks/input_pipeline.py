"""Input pipeline throughput on generated ImageNet-like JPEGs (about 500x375, ~75 KB).

    python benchmarks/input_pipeline.py [--num_images=256] [--image_size=224] [--seconds=8]

Prints, for the host (tf.data) part of the training and the evaluation pipelines:
  * images per CPU-second of the process (process CPU time, all threads): the per-core throughput, robust
    to other load on the machine;
  * images per wall-second with 1 thread and with all cores.
The training figure covers what the host does per image (read record, JPEG decode fused with the
RandomResizedCrop, antialiased bicubic resize to uint8); flip/RandAugment/normalise/erasing and
Mixup/CutMix run on the accelerator and are timed separately (on whatever JAX backend is present).
Sources: 'array_record' (a TFDS dataset prepared like imagenet2012: random access through
tfds.data_source, lookups in a Python call per chunk) and 'files' (an image folder).
Multiply the per-core figure by the host cores per accelerator to see whether they can feed it.
"""
import argparse
import io
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top


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


def measure(ds, seconds, batch):
  it = ds.as_numpy_iterator()
  next(it)  # warm up (graph building, first fetches)
  n = 0
  w0, c0 = time.time(), time.process_time()
  while time.time() - w0 < seconds:
    n += next(it)['image'].shape[0]
  wall, cpu = time.time() - w0, time.process_time() - c0
  return n / cpu, n / wall


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--num_images', type=int, default=256)
  p.add_argument('--image_size', type=int, default=224)
  p.add_argument('--batch', type=int, default=64, help='per-process batch')
  p.add_argument('--seconds', type=float, default=8.0, help='per measurement')
  p.add_argument('--sources', default='array_record,files')
  p.add_argument('--skip_device', action='store_true', help='skip the on-device augmentation timing')
  p.add_argument('--compare_pil', action='store_true',
                 help='also time the same host work done with PIL in Python (one process, per core)')
  args = p.parse_args()

  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top
  from hatnet_jax.data import pipeline, sources, testing  # pylint: disable=g-import-not-at-top

  cores = os.cpu_count()
  rng = np.random.default_rng(0)
  t = time.time()
  jpegs = [testing.make_jpeg(rng) for _ in range(args.num_images)]
  print(f'{args.num_images} generated JPEGs, 500x375, mean {np.mean([len(j) for j in jpegs]) / 1e3:.0f} KB '
        f'({time.time() - t:.0f}s); {cores} CPU cores visible; image size {args.image_size}; '
        f'tensorflow {tf.__version__}')
  tmp = tempfile.mkdtemp(prefix='hatnet_bench_')
  try:
    _run(args, jpegs, tmp, cores)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _run(args, jpegs, tmp, cores):
  from configs import default  # pylint: disable=g-import-not-at-top
  from hatnet_jax.data import pipeline, sources  # pylint: disable=g-import-not-at-top
  d = default.get_config().data
  d.image_size = args.image_size
  rows = []
  for kind in args.sources.split(','):
    if kind == 'array_record':
      name = make_array_record_dataset(jpegs, os.path.join(tmp, 'tfds'))
      d.dataset, d.data_dir = name, os.path.join(tmp, 'tfds')
    elif kind == 'files':
      root = os.path.join(tmp, 'folder')
      for split in ('train', 'validation'):
        for i, jpeg in enumerate(jpegs):
          os.makedirs(os.path.join(root, split, f'c{i % 10}'), exist_ok=True)
          with open(os.path.join(root, split, f'c{i % 10}', f'{i}.jpg'), 'wb') as f:
            f.write(jpeg)
      d.dataset, d.manual_dir = 'image_folder', root
    else:
      raise ValueError(kind)
    train_src = sources.open_split(d, 'train')
    eval_src = sources.open_split(d, 'validation')
    for threads in sorted({1, cores}):
      for label, make in (
          ('train', lambda: pipeline.train_dataset(train_src, d, 0, args.batch, 0, args.batch,
                                                   threads=threads)),
          ('eval', lambda: pipeline.eval_dataset(
              _repeat(eval_src, 1000), d, args.batch, 0, args.batch, threads=threads))):
        per_cpu, per_wall = measure(make(), args.seconds, args.batch)
        rows.append((kind, label, threads, per_cpu, per_wall))
        print(f'  {kind:12s} {label:5s} threads={threads:2d}: {per_cpu:7.0f} img per CPU-second, '
              f'{per_wall:7.0f} img/s wall', flush=True)
    if kind == 'array_record':
      # Cost of the corrupt-image replacement machinery (per core).
      per_cpu, per_wall = measure(pipeline.train_dataset(train_src, d, 0, args.batch, 0, args.batch,
                                                         threads=1, robust=False), args.seconds,
                                  args.batch)
      print(f'  {kind:12s} train without corrupt-image replacement, threads=1: {per_cpu:7.0f} img per '
            f'CPU-second', flush=True)
      d.antialias = False
      per_cpu, _ = measure(pipeline.train_dataset(train_src, d, 0, args.batch, 0, args.batch,
                                                  threads=1), args.seconds, args.batch)
      d.antialias = True
      print(f'  {kind:12s} train with antialias=False, threads=1: {per_cpu:7.0f} img per CPU-second',
            flush=True)

  if args.compare_pil:
    for label, fn in (('train', _pil_train), ('eval', _pil_eval)):
      rnd = np.random.default_rng(0)
      fn(jpegs[0], args.image_size, rnd)
      n, c0, w0 = 0, time.process_time(), time.time()
      while time.time() - w0 < args.seconds:
        fn(jpegs[n % len(jpegs)], args.image_size, rnd)
        n += 1
      per_cpu = n / (time.process_time() - c0)
      rows.append(('PIL', label, 1, per_cpu, n / (time.time() - w0)))
      print(f'  {"PIL":12s} {label:5s} 1 thread : {per_cpu:7.0f} img per CPU-second', flush=True)

  print('\nSummary (host, per core = images per CPU-second with 1 thread):')
  for kind, label, threads, per_cpu, per_wall in rows:
    if threads == 1:
      print(f'  {kind:12s} {label:5s}: {per_cpu:6.0f} img/s per core -> 16 cores ~ {16 * per_cpu:6.0f} '
            f'img/s')

  if not args.skip_device:
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from hatnet_jax.data import augment, mixup  # pylint: disable=g-import-not-at-top
    cfg = augment.AugmentConfig.from_data_config(d)
    b = args.batch
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (b, args.image_size, args.image_size, 3)),
                    jnp.uint8)
    aug = jax.jit(lambda x, s: augment.augment_batch(x, 0, s, cfg))
    mix = jax.jit(lambda k, x, y: mixup.mix_batch(k, x, y, num_classes=1000))
    t = time.time()
    out = aug(x, 0).block_until_ready()
    compile_s = time.time() - t
    t, n = time.time(), 0
    while time.time() - t < args.seconds:
      out = aug(x, n)
      n += 1
    out.block_until_ready()
    aug_rate = n * b / (time.time() - t)
    y = jnp.zeros((b,), jnp.int32)
    mix(jax.random.key(0), out, y)[0].block_until_ready()
    t, n = time.time(), 0
    while time.time() - t < min(args.seconds, 3):
      r = mix(jax.random.key(n), out, y)
      n += 1
    r[0].block_until_ready()
    mix_rate = n * b / (time.time() - t)
    print(f'\nOn-device part on {jax.devices()[0].platform} ({jax.device_count()} device(s)): flip + '
          f'RandAugment + normalise + erasing {aug_rate:.0f} img/s (compile {compile_s:.0f}s), '
          f'Mixup/CutMix {mix_rate:.0f} img/s')


def _pil_train(jpeg, size, rnd):
  """Reference: the same host work with PIL (what a Python/grain pipeline would run per image):
  full decode, RandomResizedCrop window, bicubic resize (PIL antialiases), to a uint8 array."""
  import math  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  im = Image.open(io.BytesIO(jpeg)).convert('RGB')
  w, h = im.size
  for _ in range(10):
    area = rnd.uniform(0.08, 1.0) * w * h
    ar = math.exp(rnd.uniform(math.log(3 / 4), math.log(4 / 3)))
    cw, ch = int(round(math.sqrt(area * ar))), int(round(math.sqrt(area / ar)))
    if cw <= w and ch <= h:
      top, left = int(rnd.integers(0, h - ch + 1)), int(rnd.integers(0, w - cw + 1))
      break
  else:
    top, left, ch, cw = 0, 0, h, w
  return np.asarray(im.resize((size, size), Image.BICUBIC, box=(left, top, left + cw, top + ch)))


def _pil_eval(jpeg, size, rnd):
  del rnd
  from PIL import Image  # pylint: disable=g-import-not-at-top
  im = Image.open(io.BytesIO(jpeg)).convert('RGB')
  w, h = im.size
  short = int(size / 0.875)
  nw, nh = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
  im = im.resize((nw, nh), Image.BICUBIC)
  top, left = int(round((nh - size) / 2)), int(round((nw - size) / 2))
  return np.asarray(im.crop((left, top, left + size, top + size)))


def _repeat(src, times):
  """The eval split repeated (enough batches to measure), as a view of the same source."""
  from hatnet_jax.data import sources  # pylint: disable=g-import-not-at-top

  class Repeated(sources.Source):

    def lookup(self, indices):
      return src.lookup(indices % len(src))

  return Repeated(src.name, src.split, len(src) * times, src.num_classes)


if __name__ == '__main__':
  main()
