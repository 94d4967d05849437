"""Device-side augmentation (pure JAX): RandAugment ops against PIL, random erasing, normalisation,
Mixup/CutMix with label smoothing. No tensorflow involved."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from hatnet_jax.data.classification import augment, mixup
from hatnet_jax.data.classification import randaugment as ra
from tests import REPO_ROOT

FILL = (124, 116, 104)
PIL_KW = dict(resample=Image.BICUBIC, fillcolor=FILL)


def _test_image(h=40, w=48, seed=0):
  rng = np.random.default_rng(seed)
  low = rng.integers(0, 256, (5, 6, 3)).astype(np.uint8)
  img = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC)).astype(int)
  return np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)


def _pil_reference(name, pil, level, sign):
  """timm's op definitions, written against PIL directly."""
  w, h = pil.size
  enh = {'Color': ImageEnhance.Color, 'Contrast': ImageEnhance.Contrast,
         'Brightness': ImageEnhance.Brightness, 'Sharpness': ImageEnhance.Sharpness}
  if name == 'AutoContrast':
    return ImageOps.autocontrast(pil)
  if name == 'Equalize':
    return ImageOps.equalize(pil)
  if name == 'Invert':
    return ImageOps.invert(pil)
  if name == 'Rotate':
    return pil.rotate(sign * level * 30, **PIL_KW)
  if name == 'Posterize':
    return ImageOps.posterize(pil, int(level * 4))
  if name == 'PosterizeIncreasing':
    return ImageOps.posterize(pil, 4 - int(level * 4))
  if name == 'Solarize':
    return ImageOps.solarize(pil, int(level * 256))
  if name == 'SolarizeIncreasing':
    return ImageOps.solarize(pil, 256 - int(level * 256))
  if name == 'SolarizeAdd':
    add = int(level * 110)
    return pil.point([min(255, i + add) if i < 128 else i for i in range(256)] * 3)
  # The enhancement factor is the same formula evaluated in float32 (as on device); PIL truncates
  # blend results, so a factor differing in the last bit would move some pixels by 1.
  f32 = np.float32
  level32 = f32(f32(level * 10) / f32(10))
  if name in enh:
    return enh[name](pil).enhance(float(level32 * f32(1.8) + f32(0.1)))
  if name.endswith('Increasing') and name[:-10] in enh:
    return enh[name[:-10]](pil).enhance(float(f32(1) + f32(sign) * level32 * f32(0.9)))
  affine = {'ShearX': (1, sign * level * 0.3, 0, 0, 1, 0), 'ShearY': (1, 0, 0, sign * level * 0.3, 1, 0),
            'TranslateXRel': (1, 0, sign * level * 0.45 * w, 0, 1, 0),
            'TranslateYRel': (1, 0, 0, 0, 1, sign * level * 0.45 * h)}
  return pil.transform(pil.size, Image.AFFINE, affine[name], **PIL_KW)


ALL_OPS = sorted(set(ra.RAND_TRANSFORMS + ra.RAND_INCREASING_TRANSFORMS))


SIGNED = ('Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel', 'ColorIncreasing',
          'ContrastIncreasing', 'BrightnessIncreasing', 'SharpnessIncreasing')
INTEGER_ARG = ('Posterize', 'PosterizeIncreasing', 'Solarize', 'SolarizeIncreasing', 'SolarizeAdd')


def test_randaugment_ops_match_pil():
  arr = _test_image()
  pil = Image.fromarray(arr)
  x = jnp.asarray(arr, jnp.float32)
  for name in ALL_OPS:
    cases = [(9.0, 1.0)] + ([(9.0, -1.0)] if name in SIGNED else []) + (
        [(4.3, 1.0)] if name in SIGNED + INTEGER_ARG else [])
    for magnitude, sign in cases:
      want = np.asarray(_pil_reference(name, pil, magnitude / 10, sign)).astype(int)
      got = np.asarray(ra.apply_op(name, x, magnitude, sign))
      assert got.min() >= 0 and got.max() <= 255 and np.all(got == np.round(got)), name
      diff = np.abs(got.astype(int) - want)
      # Bit-exact up to float rounding: PIL computes in float64, we in float32. That moves a rare
      # value by 1 (AutoContrast, the affine ops) and, for the affine ops, can flip a sample point
      # lying exactly on the image border between image and fill colour.
      assert np.mean(diff > 1) <= 0.005 and np.mean(diff > 0) <= 0.01, (
          name, magnitude, sign, diff.max(), np.mean(diff > 0))


def test_fused_layer_equals_single_op_and_skip():
  x = jnp.asarray(_test_image(24, 20, seed=1), jnp.float32)
  ops = ra.RAND_INCREASING_TRANSFORMS
  layer = jax.jit(lambda op, apply: ra._layer(x, op, apply, jnp.float32(8.0), jnp.float32(-1.0), ops,
                                              FILL, 'bicubic'))
  for i, name in enumerate(ops):
    fused, single = np.asarray(layer(i, True)), np.asarray(ra.apply_op(name, x, 8.0, -1.0))
    assert np.mean(fused != single) <= 0.005, name  # jit vs eager: float rounding at fill borders
  np.testing.assert_array_equal(layer(3, False), x)


def test_parse_spec():
  p = ra.parse_spec('rand-m9-mstd0.5-inc1')
  assert (p['num_layers'], p['magnitude'], p['magnitude_std'], p['prob'], p['magnitude_max']) == (
      2, 9.0, 0.5, 0.5, 10.0)
  assert p['ops'] == ra.RAND_INCREASING_TRANSFORMS and len(p['ops']) == 15
  assert ra.parse_spec('rand-m7-n3-mstd101-p0.7')['magnitude_std'] == float('inf')
  assert ra.parse_spec('rand-m7-n3')['ops'] == ra.RAND_TRANSFORMS
  assert ra.parse_spec('') is None and ra.parse_spec('none') is None
  for bad in ('auto-m9', 'rand-w0', 'rand-q1'):
    with pytest.raises(ValueError):
      ra.parse_spec(bad)


def test_rand_augment_draws():
  """Per-op application prob 0.5 over 2 layers: ~25% of images untouched; same key, same result."""
  params = ra.parse_spec('rand-m9-mstd0.5-inc1')
  x = jnp.asarray(_test_image(12, 12, seed=2), jnp.float32)
  keys = jax.random.split(jax.random.key(0), 256)
  f = jax.jit(jax.vmap(lambda k: ra.rand_augment(x, k, params)))
  out = f(keys)
  unchanged = np.mean(np.all(np.asarray(out) == np.asarray(x), axis=(1, 2, 3)))
  assert 0.15 < unchanged < 0.40, unchanged
  np.testing.assert_array_equal(out, f(keys))


def test_random_erasing_changes_only_its_box():
  img = jnp.asarray(np.random.default_rng(0).normal(size=(32, 40, 3)), jnp.float32)
  keys = jax.random.split(jax.random.key(1), 300)
  out, masks = jax.jit(jax.vmap(lambda k: augment.random_erasing(img, k, prob=0.25)))(keys)
  out, masks = np.asarray(out), np.asarray(masks)
  erased = masks.any(axis=(1, 2))
  assert 0.18 < erased.mean() < 0.32  # prob 0.25
  for o, m in zip(out, masks):
    np.testing.assert_array_equal(o[~m], np.asarray(img)[~m])  # outside the box: untouched
    if m.any():
      rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
      assert m.sum() == len(rows) * len(cols)  # one rectangle
      assert len(rows) < 32 and len(cols) < 40
      area = m.sum() / (32 * 40)
      assert 0.02 * 0.5 <= area <= 1 / 3 * 1.3  # uniform(0.02, 1/3) up to integer rounding
      assert np.all(o[m] != np.asarray(img)[m])  # 'pixel' mode: fresh N(0, 1) values
  always = jax.jit(jax.vmap(lambda k: augment.random_erasing(img, k, prob=1.0, mode='const')[0]))(
      keys[:20])
  assert np.all(np.any(np.asarray(always) == 0, axis=(1, 2, 3)))


def test_normalize_and_flip():
  img = np.random.default_rng(0).integers(0, 256, (2, 8, 6, 3)).astype(np.uint8)
  mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  np.testing.assert_allclose(augment.normalize(img, mean, std),
                             (img / 255.0 - np.array(mean)) / np.array(std), rtol=1e-5, atol=1e-5)
  cfg = augment.AugmentConfig(hflip_prob=1.0, randaugment='', erase_prob=0.0)
  out = augment.augment_batch(jnp.asarray(img), 0, 3, cfg)
  np.testing.assert_allclose(out, augment.normalize(img[:, :, ::-1], mean, std), rtol=1e-6)


def test_augment_batch_shape_determinism_and_keys():
  # The jitted function and shapes of the pipeline tests (8 devices, batch 16 of 16x16), so the
  # compilation is shared with tests/data/classification/test_pipeline.py.
  from configs import default  # pylint: disable=g-import-not-at-top
  from hatnet_jax import layout  # pylint: disable=g-import-not-at-top
  from hatnet_jax.data.classification import pipeline  # pylint: disable=g-import-not-at-top
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  sharding = layout.data_sharding(mesh)
  f = pipeline._augment_fn(augment.AugmentConfig.from_data_config(default.get_config().data), sharding)
  img = jax.device_put(
      np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3)).astype(np.uint8), sharding)
  a, b, c = (f(img, np.uint32(0), np.int32(s)) for s in (5, 5, 6))
  assert a.shape == (16, 16, 16, 3) and a.dtype == jnp.float32 and np.all(np.isfinite(a))
  assert a.sharding == sharding
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  # Row r of step s gets the same key whatever the batch size / layout around it.
  k8 = jax.random.key_data(augment.example_keys(0, 5, 8))
  np.testing.assert_array_equal(jax.random.key_data(augment.example_keys(0, 5, 4)), k8[:4])


# ------------------------------------------------------------------------------------------------
# Mixup / CutMix
# ------------------------------------------------------------------------------------------------


def _batch(b=8, h=16, w=12, k=10):
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.normal(size=(b, h, w, 3)), jnp.float32),
          jnp.asarray(rng.integers(0, k, b), jnp.int32))


def test_mixup_targets_sum_to_one_and_smoothing():
  images, labels = _batch()
  f = jax.jit(lambda r: mixup.mix_batch_with_info(r, images, labels, num_classes=10))
  for i in range(20):
    _, targets, _ = f(jax.random.key(i))
    assert targets.shape == (8, 10) and targets.dtype == jnp.float32
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
    assert float(targets.min()) >= 0.01 - 1e-7  # smoothing 0.1 over 10 classes


def test_mixing_disabled_still_smooths():
  images, labels = _batch()
  for kwargs in (dict(mixup_alpha=0.0, cutmix_alpha=0.0), dict(mixup_prob=0.0)):
    out, targets = jax.jit(lambda r, x, y: mixup.mix_batch(r, x, y, num_classes=10, **kwargs))(
        jax.random.key(0), images, labels)
    np.testing.assert_array_equal(out, images)
    want = np.full((8, 10), 0.01, np.float32)
    want[np.arange(8), np.asarray(labels)] = 0.91
    np.testing.assert_allclose(targets, want, rtol=1e-6)


def test_mixup_is_convex_combination_with_reversed_batch():
  images, labels = _batch()
  out, targets, info = jax.jit(lambda r: mixup.mix_batch_with_info(
      r, images, labels, num_classes=10, mixup_alpha=0.8, cutmix_alpha=0.0))(jax.random.key(0))
  lam = float(info['lam'])
  assert 0 < lam < 1 and not bool(info['use_cutmix'])
  np.testing.assert_allclose(out, lam * images + (1 - lam) * images[::-1], rtol=1e-5, atol=1e-6)
  sm = mixup.smooth_one_hot(labels, 10, 0.1)
  np.testing.assert_allclose(targets, lam * sm + (1 - lam) * sm[::-1], rtol=1e-5)


def test_cutmix_box_area_equals_one_minus_lambda():
  images, labels = _batch(h=20, w=28)
  f = jax.jit(lambda r: mixup.mix_batch_with_info(r, images, labels, num_classes=10,
                                                  mixup_alpha=0.0, cutmix_alpha=1.0))
  clipped = 0
  for i in range(40):
    out, targets, info = f(jax.random.key(i))
    assert bool(info['use_cutmix'])
    y0, y1, x0, x1 = (int(v) for v in info['box'])
    pasted = np.zeros((20, 28), bool)
    pasted[y0:y1, x0:x1] = True
    o, x, p = np.asarray(out), np.asarray(images), np.asarray(images[::-1])
    np.testing.assert_array_equal(o[:, pasted], p[:, pasted])
    np.testing.assert_array_equal(o[:, ~pasted], x[:, ~pasted])
    lam = float(info['lam'])
    assert lam == pytest.approx(1 - pasted.mean(), abs=1e-6)  # corrected to the clipped box
    sm = np.asarray(mixup.smooth_one_hot(labels, 10, 0.1))
    np.testing.assert_allclose(targets, lam * sm + (1 - lam) * sm[::-1], rtol=1e-5, atol=1e-7)
    clipped += (y0 == 0 or x0 == 0 or y1 == 20 or x1 == 28)
  assert clipped > 0  # the clipping path was exercised


def test_switch_probability_and_num_groups():
  images, labels = _batch()
  keys = jax.random.split(jax.random.key(3), 400)
  out, _, infos = jax.jit(jax.vmap(lambda r: mixup.mix_batch_with_info(
      r, images, labels, num_classes=10, num_groups=2)))(keys)
  assert 0.42 < float(np.mean(infos['use_cutmix'])) < 0.58
  # num_groups=2: partners are reversed within each half of the batch.
  i = int(np.nonzero(~np.asarray(infos['use_cutmix']))[0][0])
  lam = float(infos['lam'][i])
  partner = np.concatenate([np.asarray(images[:4])[::-1], np.asarray(images[4:])[::-1]])
  np.testing.assert_allclose(out[i], lam * images + (1 - lam) * partner, rtol=1e-5, atol=1e-6)


def test_data_package_imports_without_tensorflow():
  code = ('import sys; sys.modules["tensorflow"] = None; sys.modules["tensorflow_datasets"] = None\n'
          'import hatnet_jax, hatnet_jax.data, hatnet_jax.data.classification.mixup, hatnet_jax.data.classification.augment\n'
          'from hatnet_jax.data import classification as data\n'
          'assert callable(data.mixup.mix_batch) and callable(data.create_train_iterator)\n')
  repo = REPO_ROOT
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  subprocess.run([sys.executable, '-c', code], check=True, cwd=repo, env=env, timeout=120)
