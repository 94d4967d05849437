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
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top

# The benchmark's parts, beside this file (benchmarks/ is on sys.path when it runs as a script).
from device_augment_timing import time_on_device  # noqa: E402  pylint: disable=g-import-not-at-top
from jpeg_sources import make_array_record_dataset, repeat_split, write_image_folder  # noqa: E402
from pil_reference import time_pil  # noqa: E402
from timm_comparison import TIMM_INSTALL, compare_timm, import_timm, timm_runner  # noqa: E402


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
  from hatnet_jax.data import testing  # pylint: disable=g-import-not-at-top

  cores = os.cpu_count()
  rng = np.random.default_rng(0)
  t = time.time()
  jpegs = [testing.make_jpeg(rng) for _ in range(args.num_images)]
  print(f'{args.num_images} generated JPEGs, 500x375, mean {np.mean([len(j) for j in jpegs]) / 1e3:.0f} KB '
        f'({time.time() - t:.0f}s); {cores} CPU cores visible; image size {args.image_size}; '
        f'tensorflow {tf.__version__}')
  tmp = tempfile.mkdtemp(prefix='hatnet_bench_')
  try:
    timm_run = timm_runner(jpegs, args) if args.compare_timm else None
    timm_before = timm_run() if timm_run else None
    _run(args, jpegs, tmp, cores, timm_run, timm_before)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _run(args, jpegs, tmp, cores, timm_run=None, timm_before=None):
  from configs import default  # pylint: disable=g-import-not-at-top
  from hatnet_jax.data.classification import pipeline, sources  # pylint: disable=g-import-not-at-top
  d = default.get_config().data
  d.image_size = args.image_size
  rows = []
  for kind in args.sources.split(','):
    if kind == 'array_record':
      name = make_array_record_dataset(jpegs, os.path.join(tmp, 'tfds'))
      d.dataset, d.data_dir = name, os.path.join(tmp, 'tfds')
    elif kind == 'files':
      root = os.path.join(tmp, 'folder')
      write_image_folder(jpegs, root)
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
              repeat_split(eval_src, 1000), d, args.batch, 0, args.batch, threads=threads))):
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
    rows += time_pil(jpegs, args)

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
    compare_timm(jpegs, args, ours, host_resize, d.device_resize, timm_run, timm_before)

  if not args.skip_device:
    time_on_device(args, d)


if __name__ == '__main__':
  main()
