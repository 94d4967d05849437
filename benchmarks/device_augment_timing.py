"""input_pipeline.py's on-device part of the training input (unless --skip_device): the resize from the
batch's canvases, flip, RandAugment, normalise and erasing, then Mixup/CutMix, timed on whatever JAX backend
is present, per image and, with --train_step_ms_per_image, as a fraction of a train step."""
import time

import numpy as np

from pil_reference import crop_box


def time_on_device(args, d):
  """Times and prints the on-device augmentation of batches of --batch images, data config `d`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from hatnet_jax.data.classification import augment, mixup  # pylint: disable=g-import-not-at-top
  cfg = augment.AugmentConfig.from_data_config(d)
  b, canvas = args.batch, int(d.device_resize)
  # Canvases holding the windows of the generated JPEGs' crops (sizes drawn as RandomResizedCrop does).
  x = np.zeros((b, canvas, canvas, 3), np.uint8)
  extents = np.array([crop_box(np.random.default_rng(i), 375, 500)[2:] for i in range(b)], np.int32)
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
