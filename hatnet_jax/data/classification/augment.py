"""Per-example training augmentation that runs on the accelerator, in pure JAX (no tensorflow).

The host pipeline (tf.data) decodes and crops (RandomResizedCrop) to uint8, resized to ``[S, S, 3]``
there or, with ``data.device_resize``, shipped unresized in a zero-padded canvas with its extent; this
module then applies, per example and in timm's order,

  [resize of the crop window (`crop_resize`)] -> horizontal flip (p = hflip_prob) -> RandAugment ->
  /255, normalise with mean/std -> random erasing

on the device (see `augment_batch`). Moving these ops off the host leaves the host CPUs only JPEG
decoding (and, without ``device_resize``, one resize per image), and sends uint8 instead of float32
over PCIe. Each example's randomness is derived from
``(seed, step, row in the global batch)``, so a batch is the same whatever the device count.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp

from hatnet_jax.data.classification import crop_resize
from hatnet_jax.data.classification import randaugment as ra

_SALT = 0x4A7  # separates the device-side augmentation stream from other uses of the seed


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  hflip_prob: float = 0.5
  randaugment: str = 'rand-m9-mstd0.5-inc1'
  interpolation: str = 'bicubic'
  mean: tuple = (0.485, 0.456, 0.406)
  std: tuple = (0.229, 0.224, 0.225)
  erase_prob: float = 0.25
  erase_mode: str = 'pixel'
  erase_count: int = 1
  image_size: int = 224  # output side of the crop's resize, when the batch holds canvases
  antialias: bool = True

  @classmethod
  def from_data_config(cls, d):
    return cls(hflip_prob=float(d.hflip_prob), randaugment=d.randaugment or '',
               interpolation=d.interpolation, mean=tuple(float(x) for x in d.mean),
               std=tuple(float(x) for x in d.std), erase_prob=float(d.erase_prob),
               erase_mode=d.erase_mode, erase_count=int(d.erase_count), image_size=int(d.image_size),
               antialias=bool(d.get('antialias', True)))

  @property
  def fill(self):
    return tuple(min(255, round(255 * m)) for m in self.mean)  # timm `img_mean`


def normalize(images, mean, std):
  """uint8 / integer-valued images -> (x / 255 - mean) / std, float32."""
  mean = jnp.asarray(mean, jnp.float32) * 255.0
  std = jnp.asarray(std, jnp.float32) * 255.0
  return (images.astype(jnp.float32) - mean) / std


def random_erasing(img, key, prob=0.25, mode='pixel', max_count=1, min_area=0.02, max_area=1 / 3,
                   min_aspect=0.3, attempts=10):
  """timm RandomErasing of one normalised image [H, W, C].

  With probability `prob`, erases `count` boxes (count uniform in 1..max_count); each box has area
  uniform(min_area, max_area) * H * W / count and log-uniform aspect in [min_aspect, 1 / min_aspect],
  the first of `attempts` draws that fits strictly inside (h < H, w < W) is used, none if none fits.
  Fill: 'pixel' per-pixel N(0, 1); 'rand' one N(0, 1) colour per channel; 'const' zeros.
  Returns (image, box_mask [H, W] bool) so tests can check that only the box changed.
  """
  h, w, c = img.shape
  # All scalars from one uniform draw, the noise from one normal draw (fast to compile).
  u = jax.random.uniform(key, (2 + (2 * attempts + 2) * max_count,))
  do_erase = u[0] < prob
  count = jnp.minimum(jnp.floor(u[1] * max_count).astype(jnp.int32) + 1, max_count)
  noise_key = jax.random.fold_in(key, 1)
  if mode == 'pixel':
    fill = jax.random.normal(noise_key, img.shape, jnp.float32)
  elif mode == 'rand':
    fill = jnp.broadcast_to(jax.random.normal(noise_key, (1, 1, c), jnp.float32), img.shape)
  elif mode == 'const':
    fill = jnp.zeros_like(img)
  else:
    raise ValueError(f'Unknown erase mode {mode!r}')
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  mask = jnp.zeros((h, w), bool)
  log_lo, log_hi = math.log(min_aspect), -math.log(min_aspect)
  for j in range(max_count):
    uj = u[2 + (2 * attempts + 2) * j: 2 + (2 * attempts + 2) * (j + 1)]
    target = (min_area + (max_area - min_area) * uj[:attempts]) * h * w / count
    aspect = jnp.exp(log_lo + (log_hi - log_lo) * uj[attempts:2 * attempts])
    eh = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
    ew = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
    ok = (ew < w) & (eh < h)
    first = jnp.argmax(ok)
    eh, ew = eh[first], ew[first]
    top = jnp.floor(uj[-2] * (h - eh + 1)).astype(jnp.int32)
    left = jnp.floor(uj[-1] * (w - ew + 1)).astype(jnp.int32)
    box = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
    mask = mask | (box & jnp.any(ok) & (j < count))
  mask = mask & do_erase
  return jnp.where(mask[..., None], fill, img), mask


def example_keys(seed, step, batch_size):
  """[batch_size] keys for the rows of global batch `step` (independent of the device layout)."""
  base = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _SALT), step)
  return jax.vmap(lambda r: jax.random.fold_in(base, r))(jnp.arange(batch_size))


def augment_example(img_u8, key, cfg: AugmentConfig, ra_params):
  """uint8 [S, S, 3] -> float32 normalised, augmented [S, S, 3]."""
  k_flip, k_ra, k_erase = jax.random.split(key, 3)
  img = img_u8.astype(jnp.float32)
  if cfg.hflip_prob > 0:
    img = jnp.where(jax.random.uniform(k_flip) < cfg.hflip_prob, img[:, ::-1], img)
  img = ra.rand_augment(img, k_ra, ra_params, fill=cfg.fill, interpolation=cfg.interpolation)
  img = normalize(img, cfg.mean, cfg.std)
  if cfg.erase_prob > 0:
    img, _ = random_erasing(img, k_erase, cfg.erase_prob, cfg.erase_mode, cfg.erase_count)
  return img


def augment_batch(images_u8, seed, step, cfg: AugmentConfig, extents=None):
  """Augments a global batch uint8 [B, S, S, 3] of training step `step`; jit-able, shardable.

  extents: int [B, 2] (height, width) when `images_u8` holds [B, C, C, 3] canvases whose top-left windows
  are the crops (``data.device_resize``): each is resized to ``cfg.image_size`` first.
  """
  ra_params = ra.parse_spec(cfg.randaugment)
  keys = example_keys(seed, step, images_u8.shape[0])

  def one(x, k, hw):
    if hw is not None:
      x = crop_resize.resize_window(x, hw[0], hw[1], cfg.image_size, cfg.interpolation, cfg.antialias)
    return augment_example(x, k, cfg, ra_params)

  return jax.vmap(one)(images_u8, keys, extents)
