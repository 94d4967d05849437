"""input_pipeline.py --compare_pil: the host work of our pipeline done with PIL in Python (what a Python/grain
pipeline would run per image), and the RandomResizedCrop window sampling it shares with the on-device timing."""
import io
import time

import numpy as np


def crop_box(rng, height, width):
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


def pil_train(jpeg, size, rnd):
  """Reference: the same host work with PIL (what a Python/grain pipeline would run per image):
  full decode, RandomResizedCrop window, bicubic resize (PIL antialiases), to a uint8 array."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  im = Image.open(io.BytesIO(jpeg)).convert('RGB')
  w, h = im.size
  top, left, ch, cw = crop_box(rnd, h, w)
  return np.asarray(im.resize((size, size), Image.BICUBIC, box=(left, top, left + cw, top + ch)))


def pil_eval(jpeg, size, rnd):
  del rnd
  from PIL import Image  # pylint: disable=g-import-not-at-top
  im = Image.open(io.BytesIO(jpeg)).convert('RGB')
  w, h = im.size
  short = int(size / 0.875)
  nw, nh = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
  im = im.resize((nw, nh), Image.BICUBIC)
  top, left = int(round((nh - size) / 2)), int(round((nw - size) / 2))
  return np.asarray(im.crop((left, top, left + size, top + size)))


def time_pil(jpegs, args) -> list[tuple]:
  """--compare_pil: the PIL reference's images per CPU-second (one thread) for train and eval, printed as it
  goes; rows (source, label, threads, per CPU-second, per wall-second) as input_pipeline.py's."""
  rows = []
  for label, fn in (('train', pil_train), ('eval', pil_eval)):
    rnd = np.random.default_rng(0)
    fn(jpegs[0], args.image_size, rnd)
    n, c0, w0 = 0, time.process_time(), time.time()
    while time.time() - w0 < args.seconds:
      fn(jpegs[n % len(jpegs)], args.image_size, rnd)
      n += 1
    per_cpu = n / (time.process_time() - c0)
    rows.append(('PIL', label, 1, per_cpu, n / (time.time() - w0)))
    print(f'  {"PIL":12s} {label:5s} 1 thread : {per_cpu:7.0f} img per CPU-second', flush=True)
  return rows
