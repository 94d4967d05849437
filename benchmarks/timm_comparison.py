"""input_pipeline.py --compare_timm: timm's DeiT training transform timed over the same JPEGs, one thread,
before and after our measurements, and its CPU time per image printed against ours."""
import io
import sys
import time

import numpy as np

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


def timm_runner(jpegs, args):
  """timm's DeiT training transform over the JPEGs, one thread: returns `run() -> (CPU s, wall s, n)` per
  image over --seconds, called before and after our measurements (the machine's speed drifts), with
  `run.shimmed` (see `posterize_zero_bits`)."""
  import random  # pylint: disable=g-import-not-at-top
  timm, torch, _, Image = import_timm()
  torch.set_num_threads(1)
  shimmed = posterize_zero_bits(timm)
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


def compare_timm(jpegs, args, ours, host_resize, canvas, timm_run, timm_before):
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


def posterize_zero_bits(timm):
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
