"""Input pipeline throughput on generated ImageNet-like JPEGs (about 500x375, ~75 KB).

    python benchmarks/input_pipeline.py [--num_images=256] [--image_size=224] [--seconds=8]
    python benchmarks/input_pipeline.py --compare_timm [--train_step_ms_per_image=330]

Prints, for the host (tf.data) part of the training and the evaluation pipelines:
  * images per CPU-second of the process (process CPU time, all threads): the per-core throughput, robust
    to other load on the machine;
  * images per wall-second with 1 thread and with all cores.
The training figure covers what the host does per image (read record, JPEG decode fused with the
RandomResizedCrop, the window padded into the batch's canvas: `config.data.device_resize`, 512 by
default), on the plain pipeline a run uses until its first undecodable image; the antialiased bicubic
resize, flip/RandAugment/normalise/erasing and Mixup/CutMix run on the accelerator and are timed
separately (on whatever JAX backend is present). Two more training figures: the replacing pipeline a run
switches to at its first undecodable image, and the resize on the host (device_resize=0, the pipeline
before 2026-11-29's fifth session).
Sources: 'array_record' (a TFDS dataset prepared like imagenet2012: random access through
tfds.data_source, lookups in a Python call per chunk) and 'files' (an image folder).
Multiply the per-core figure by the host cores per accelerator to see whether they can feed it.

--compare_timm also times timm's DeiT training transform (PIL decode, RandomResizedCrop, flip,
RandAugment m9, ToTensor + normalise, random erasing) over the same JPEGs, in this process with one
thread, before and after our measurements (the mean counts: the machine's speed drifts), and prints CPU
time per image for it and for our host part, and the ratio. It needs timm and a
torchvision that imports with the installed torch; neither is a requirement of the project:
    python -m pip install --no-deps timm==1.0.31 torchvision==0.16.2
(with the CPU torch 2.13 wheel, 0.16.2 is the newest torchvision from PyPI that imports: the newer PyPI
wheels are CUDA builds whose operator registration fails without the CUDA torch; a torchvision built
for the installed torch, e.g. 0.28.0+cpu from PyTorch's CPU wheel index, serves as well.)
The on-device timing also prints its cost per image on the backend present, and with
--train_step_ms_per_image that cost as a fraction of the train step.
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


HOST_RESIZE = 'train, resized on the host (device_resize=0)'
TIMM_INSTALL = 'python -m pip install --no-deps timm==1.0.31 torchvision==0.16.2'


def import_timm():
  """(timm, torch, torchvision, PIL.Image), or one line saying how to install them and exit 2."""
  import warnings  # pylint: disable=g-import-not-at-top
  try:
    with warnings.catch_warnings():
      # torchvision.io's image extension is not used here (timm's transform decodes with PIL).
      warnings.filterwarnings('ignore', message='Failed to load image Python extension')
      import timm  # pylint: disable=g-import-not-at-top
      import timm.data  # pylint: disable=g-import-not-at-top,unused-import
      import torch  # pylint: disable=g-import-not-at-top
      import torchvision  # pylint: disable=g-import-not-at-top
      from PIL import Image  # pylint: disable=g-import-not-at-top
  except (ImportError, RuntimeError) as e:  # RuntimeError: a torchvision built for another torch
    print(f'--compare_timm needs timm and a torchvision that imports with this torch '
          f'({type(e).__name__}: {e}); install them with: {TIMM_INSTALL}', file=sys.stderr)
    sys.exit(2)
  return timm, torch, torchvision, Image


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--num_images', type=int, default=256)
  p.add_argument('--image_size', type=int, default=224)
  p.add_argument('--batch', type=int, default=64, help='per-process batch')
  p.add_argument('--seconds', type=float, default=8.0, help='per measurement')
  p.add_argument('--sources', default='array_record,files')
  p.add_argument('--skip_device', action='store_true', help='skip the on-device augmentation timing')
  p.add_argument('--compare_pil', action='store_true',
                 help='also time the same host work done with PIL in Python (one process, per core)')
  p.add_argument('--compare_timm', action='store_true',
                 help="also time timm's DeiT training transform (one thread) and print the CPU cost per "
                      f'image against ours (needs: {TIMM_INSTALL})')
  p.add_argument('--train_step_ms_per_image', type=float, default=None,
                 help='wall ms per image of a train step on the same backend (e.g. ~330 for hatnet_tiny at '
                      'batch 16 on a 2-core CPU): prints the on-device augmentation as a fraction of it')
  args = p.parse_args(argv)
  if args.compare_timm:
    import_timm()  # before the slow set-up: a missing timm fails at once

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
    timm_run = _timm_runner(jpegs, args) if args.compare_timm else None
    timm_before = timm_run() if timm_run else None
    _run(args, jpegs, tmp, cores, timm_run, timm_before)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _run(args, jpegs, tmp, cores, timm_run=None, timm_before=None):
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
                                                   threads=threads, robust=False)),
          ('eval', lambda: pipeline.eval_dataset(
              _repeat(eval_src, 1000), d, args.batch, 0, args.batch, threads=threads))):
        per_cpu, per_wall = measure(make(), args.seconds, args.batch)
        rows.append((kind, label, threads, per_cpu, per_wall))
        print(f'  {kind:12s} {label:5s} threads={threads:2d}: {per_cpu:7.0f} img per CPU-second, '
              f'{per_wall:7.0f} img/s wall', flush=True)
    if kind == 'array_record':
      # The pipeline a run switches to at its first undecodable image (per core).
      per_cpu, per_wall = measure(pipeline.train_dataset(train_src, d, 0, args.batch, 0, args.batch,
                                                         threads=1, robust=True), args.seconds,
                                  args.batch)
      print(f'  {kind:12s} train replacing undecodable images (what a run switches to at the first), '
            f'threads=1: {per_cpu:7.0f} img per CPU-second', flush=True)
      per_cpu, _ = measure(pipeline.train_dataset(train_src, d, 0, args.batch, 0, args.batch,
                                                  threads=1, canvas=0, robust=False), args.seconds,
                           args.batch)
      rows.append((kind, HOST_RESIZE, 1, per_cpu, None))
      print(f'  {kind:12s} train resized on the host (device_resize=0), threads=1: {per_cpu:7.0f} img per '
            f'CPU-second', flush=True)

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

  if args.compare_timm:
    # Ours: the host part of the training pipeline with 1 thread, the ImageNet source if it was measured.
    ours = [r for r in rows if r[1] == 'train' and r[2] == 1 and r[0] != 'PIL']
    ours = next((r for r in ours if r[0] == 'array_record'), ours[0] if ours else None)
    host_resize = next((r for r in rows if r[1] == HOST_RESIZE), None)
    _compare_timm(jpegs, args, ours, host_resize, d.device_resize, timm_run, timm_before)

  if not args.skip_device:
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from hatnet_jax.data import augment, mixup  # pylint: disable=g-import-not-at-top
    cfg = augment.AugmentConfig.from_data_config(d)
    b, canvas = args.batch, int(d.device_resize)
    # Canvases holding the windows of the generated JPEGs' crops (sizes drawn as RandomResizedCrop does).
    x = np.zeros((b, canvas, canvas, 3), np.uint8)
    extents = np.array([_crop_box(np.random.default_rng(i), 375, 500)[2:] for i in range(b)], np.int32)
    for i, (h, w) in enumerate(extents):
      x[i, :h, :w] = np.random.default_rng(i).integers(0, 256, (h, w, 3))
    x, extents = jnp.asarray(x), jnp.asarray(extents)
    aug = jax.jit(lambda x, s: augment.augment_batch(x, 0, s, cfg, extents))
    mix = jax.jit(lambda k, x, y: mixup.mix_batch(k, x, y, num_classes=1000))
    t = time.time()
    out = aug(x, 0).block_until_ready()
    compile_s = time.time() - t
    t, n = time.time(), 0
    c = time.process_time()
    while time.time() - t < args.seconds:
      out = aug(x, n)
      n += 1
    out.block_until_ready()
    aug_rate, aug_cpu = n * b / (time.time() - t), (time.process_time() - c) / (n * b)
    y = jnp.zeros((b,), jnp.int32)
    mix(jax.random.key(0), out, y)[0].block_until_ready()
    t, c, n = time.time(), time.process_time(), 0
    while time.time() - t < min(args.seconds, 3):
      r = mix(jax.random.key(n), out, y)
      n += 1
    r[0].block_until_ready()
    mix_rate, mix_cpu = n * b / (time.time() - t), (time.process_time() - c) / (n * b)
    platform = jax.devices()[0].platform
    print(f'\nOn-device part on {platform} ({jax.device_count()} device(s)): resize from {canvas}x{canvas} '
          f'canvases + flip + RandAugment + normalise + erasing {aug_rate:.0f} img/s (compile '
          f'{compile_s:.0f}s), Mixup/CutMix {mix_rate:.0f} img/s')
    # Per image (batch {b}): wall time is what a train step on the same backend waits for; CPU time sums
    # the backend's threads (on a GPU/TPU it is the host's dispatch work only).
    dev_ms = 1e3 / aug_rate + 1e3 / mix_rate
    print(f'  per image on {platform}: augmentation {1e3 / aug_rate:.1f} ms wall ({1e3 * aug_cpu:.1f} CPU-ms), '
          f'Mixup/CutMix {1e3 / mix_rate:.2f} ms wall ({1e3 * mix_cpu:.2f} CPU-ms); together {dev_ms:.1f} ms '
          f'per image', flush=True)
    if args.train_step_ms_per_image:
      print(f'  = {100 * dev_ms / args.train_step_ms_per_image:.1f} % of a train step of '
            f'{args.train_step_ms_per_image:g} ms per image (--train_step_ms_per_image, same backend)')


def _crop_box(rng, height, width):
  """(top, left, h, w) of a RandomResizedCrop window of a height x width image (timm's sampling, 10
  tries, then the whole image)."""
  import math  # pylint: disable=g-import-not-at-top
  for _ in range(10):
    area = rng.uniform(0.08, 1.0) * height * width
    ar = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    cw, ch = int(round(math.sqrt(area * ar))), int(round(math.sqrt(area / ar)))
    if cw <= width and ch <= height:
      return int(rng.integers(0, height - ch + 1)), int(rng.integers(0, width - cw + 1)), ch, cw
  return 0, 0, height, width


def _timm_runner(jpegs, args):
  """timm's DeiT training transform over the JPEGs, one thread: returns `run() -> (CPU s, wall s, n)` per
  image over --seconds, called before and after our measurements (the machine's speed drifts), with
  `run.shimmed` (see `_posterize_zero_bits`)."""
  import random  # pylint: disable=g-import-not-at-top
  timm, torch, _, Image = import_timm()
  torch.set_num_threads(1)
  shimmed = _posterize_zero_bits(timm)
  random.seed(0)
  np.random.seed(0)  # RandAugment draws its ops with numpy's global generator
  torch.manual_seed(0)
  transform = timm.data.create_transform(
      args.image_size, is_training=True, auto_augment='rand-m9-mstd0.5-inc1', interpolation='bicubic',
      re_prob=0.25, re_mode='pixel', re_count=1)

  def one(jpeg):
    # PIL decodes the whole image with libjpeg's default IDCT, the accurate integer one (JDCT_ISLOW).
    return transform(Image.open(io.BytesIO(jpeg)).convert('RGB'))

  assert tuple(one(jpegs[0]).shape) == (3, args.image_size, args.image_size)  # warm up

  def run():
    n, c0, w0 = 0, time.process_time(), time.time()
    while time.time() - w0 < args.seconds:
      one(jpegs[n % len(jpegs)])
      n += 1
    return (time.process_time() - c0) / n, (time.time() - w0) / n, n

  run.shimmed = shimmed
  return run


def _compare_timm(jpegs, args, ours, host_resize, canvas, timm_run, timm_before):
  """Prints timm's cost per image (mean of the runs before and after ours) against `ours`."""
  timm, torch, torchvision, Image = import_timm()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from hatnet_jax.data.classification import transforms  # pylint: disable=g-import-not-at-top
  timm_after = timm_run()
  timm_cpu, timm_wall = (timm_before[0] + timm_after[0]) / 2, (timm_before[1] + timm_after[1]) / 2
  n = timm_before[2] + timm_after[2]
  shimmed = timm_run.shimmed
  # Same decoder accuracy: PIL's pixels against TF's decode with the pipeline's DCT method.
  first = jpegs[0]
  diff = np.abs(np.asarray(Image.open(io.BytesIO(first)).convert('RGB'), np.int16) -
                tf.io.decode_jpeg(first, channels=3, dct_method=transforms.DCT_METHOD).numpy()).max()

  print(f'\ntimm DeiT train transform vs ours, per image, process CPU time (all threads), '
        f'image size {args.image_size}:')
  print(f'  timm {timm.__version__} (torchvision {torchvision.__version__}, torch {torch.__version__}, '
        f'torch threads {torch.get_num_threads()}), {n} images: PIL decode (accurate integer IDCT, '
        f'JDCT_ISLOW) + RandomResizedCrop bicubic + flip + RandAugment m9 + ToTensor/normalise + '
        f'random erasing 0.25')
  if shimmed:
    print('  (Posterize with 0 bits, drawn at magnitude 10, gives the all-zero image as older Pillow did, '
          'and as ours: this Pillow raises there)')
  print(f'  timm : {1e3 * timm_cpu:6.2f} ms/image, {1 / timm_cpu:6.0f} img per CPU-second '
        f'({1e3 * timm_wall:.2f} ms wall; before / after ours: {1e3 * timm_before[0]:.2f} / '
        f'{1e3 * timm_after[0]:.2f} CPU-ms)')
  if ours is None:
    print('  ours : not measured (no training source in --sources)')
    return
  kind, _, _, per_cpu, _ = ours
  print(f'  ours : {1e3 / per_cpu:6.2f} ms/image, {per_cpu:6.0f} img per CPU-second (host part: {kind} '
        f'train, threads=1, TF decode {transforms.DCT_METHOD} fused with RandomResizedCrop, the window '
        f'padded into a {canvas}x{canvas} canvas: device_resize={canvas})')
  print(f'  ratio timm / ours: {timm_cpu * per_cpu:.2f}x CPU per image (target >= 2x); ours leaves the '
        f'resize, flip, RandAugment, normalise, erasing and Mixup/CutMix to the device (timed below unless '
        f'--skip_device)')
  if host_resize is not None:
    per_cpu = host_resize[3]
    print(f'  ours, resized on the host (device_resize=0, antialiased bicubic to uint8): '
          f'{1e3 / per_cpu:6.2f} ms/image, ratio {timm_cpu * per_cpu:.2f}x')
  print(f'  decoders: max |PIL - tf.io.decode_jpeg({transforms.DCT_METHOD})| on the first image = {diff} '
        f'levels', flush=True)


def _posterize_zero_bits(timm):
  """timm's RandAugment posterize keeps 0 bits at magnitude 10 (m9 with mstd 0.5 reaches it); older Pillow
  versions returned an all-zero image there, newer ones raise. Gives the zero image (one LUT, as
  Pillow did) where needed; True if it had to."""
  from PIL import ImageOps, Image  # pylint: disable=g-import-not-at-top
  try:
    ImageOps.posterize(Image.new('RGB', (1, 1)), 0)
    return False
  except ValueError:
    pass
  ops = timm.data.auto_augment.NAME_TO_OP
  original = ops['PosterizeIncreasing']

  def posterize(img, bits_to_keep, **kwargs):
    if bits_to_keep <= 0:
      return img.point([0] * 256 * len(img.getbands()))
    return original(img, bits_to_keep, **kwargs)

  for name in ('Posterize', 'PosterizeIncreasing', 'PosterizeOriginal'):
    if ops.get(name) is original:
      ops[name] = posterize
  return True


def _pil_train(jpeg, size, rnd):
  """Reference: the same host work with PIL (what a Python/grain pipeline would run per image):
  full decode, RandomResizedCrop window, bicubic resize (PIL antialiases), to a uint8 array."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  im = Image.open(io.BytesIO(jpeg)).convert('RGB')
  w, h = im.size
  top, left, ch, cw = _crop_box(rnd, h, w)
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
