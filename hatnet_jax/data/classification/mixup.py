"""Mixup / CutMix with label smoothing, per batch, in pure JAX (runs on device inside the train step).

timm `Mixup(mode='batch')` semantics (the DeiT/PVT recipe: mixup_alpha 0.8, cutmix_alpha 1.0,
prob 1.0, switch_prob 0.5, label_smoothing 0.1, correct_lam=True):

* with probability `mixup_prob` the batch is mixed, otherwise lambda = 1 (targets are still smoothed);
* if both alphas > 0, CutMix is used with probability `switch_prob`, else Mixup; lambda ~ Beta(alpha,
  alpha) of the chosen method;
* each example is mixed with its partner in the *reversed* batch (x[::-1]);
* CutMix box: side ratio sqrt(1 - lambda), centre uniform over the image, clipped to the image; lambda is
  then corrected to 1 - box_area / image_area (the area actually pasted);
* targets = lambda * smooth(y) + (1 - lambda) * smooth(y[::-1]) with smooth(y) = one_hot(y) * (1 -
  s) + s / num_classes, so every row sums to 1.

`num_groups` > 1 reverses within `num_groups` equal contiguous groups instead of the whole batch (e.g.
one group per device, as timm does per GPU, which avoids moving images between devices).
"""
import jax
import jax.numpy as jnp


def smooth_one_hot(labels, num_classes, label_smoothing):
  off = label_smoothing / num_classes
  on = 1.0 - label_smoothing + off
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * (on - off) + off


def _partner(x, num_groups):
  if num_groups == 1:
    return x[::-1]
  b = x.shape[0]
  if b % num_groups:
    raise ValueError(f'batch {b} not divisible by num_groups {num_groups}')
  g = x.reshape((num_groups, b // num_groups) + x.shape[1:])
  return g[:, ::-1].reshape(x.shape)


def mix_batch_with_info(rng, images, labels, *, num_classes, mixup_alpha=0.8, cutmix_alpha=1.0,
                        mixup_prob=1.0, switch_prob=0.5, label_smoothing=0.1, correct_lam=True,
                        num_groups=1):
  """Like `mix_batch`, and also returns dict(lam, use_cutmix, box=(y0, y1, x0, x1))."""
  k_uniform, k_gamma = jax.random.split(rng)
  u = jax.random.uniform(k_uniform, (4,))  # apply, switch, box centre y, box centre x
  b, h, w = images.shape[0], images.shape[1], images.shape[2]
  enabled = mixup_alpha > 0 or cutmix_alpha > 0
  apply = u[0] < mixup_prob if enabled else jnp.bool_(False)
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = u[1] < switch_prob
  else:
    use_cutmix = jnp.bool_(cutmix_alpha > 0 and mixup_alpha <= 0)
  # Beta(a, a) = G1 / (G1 + G2) with G ~ Gamma(a): one gamma draw for both methods.
  alphas = jnp.array([mixup_alpha, mixup_alpha, cutmix_alpha, cutmix_alpha], jnp.float32)
  g = jax.random.gamma(k_gamma, jnp.maximum(alphas, 1e-3))
  lam_mix = g[0] / (g[0] + g[1]) if mixup_alpha > 0 else jnp.float32(1)
  lam_cut = g[2] / (g[2] + g[3]) if cutmix_alpha > 0 else jnp.float32(1)
  lam = jnp.where(apply, jnp.where(use_cutmix, lam_cut, lam_mix), 1.0).astype(jnp.float32)
  use_cutmix = apply & use_cutmix

  # CutMix box (timm rand_bbox, margin 0): integer cut sizes, centre uniform, halves clipped.
  ratio = jnp.sqrt(jnp.clip(1.0 - lam, 0.0, 1.0))
  cut_h = jnp.floor(h * ratio).astype(jnp.int32)
  cut_w = jnp.floor(w * ratio).astype(jnp.int32)
  cy = jnp.minimum(jnp.floor(u[2] * h).astype(jnp.int32), h - 1)
  cx = jnp.minimum(jnp.floor(u[3] * w).astype(jnp.int32), w - 1)
  y0, y1 = jnp.clip(cy - cut_h // 2, 0, h), jnp.clip(cy + cut_h // 2, 0, h)
  x0, x1 = jnp.clip(cx - cut_w // 2, 0, w), jnp.clip(cx + cut_w // 2, 0, w)
  if correct_lam:
    lam_box = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (h * w)
    lam = jnp.where(use_cutmix, lam_box, lam)
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
  box = (box & use_cutmix)[None, :, :, None]

  partner = _partner(images, num_groups)
  lam_img = lam.astype(images.dtype)
  mixed = jnp.where(use_cutmix, images, images * lam_img + partner * (1 - lam_img))
  mixed = jnp.where(box, partner, mixed)
  mixed = jnp.where(apply, mixed, images)

  y1h = smooth_one_hot(labels, num_classes, label_smoothing)
  targets = lam * y1h + (1.0 - lam) * _partner(y1h, num_groups)
  return mixed, targets, dict(lam=lam, use_cutmix=use_cutmix, box=(y0, y1, x0, x1))


def mix_batch(rng, images, labels, *, num_classes, mixup_alpha=0.8, cutmix_alpha=1.0, mixup_prob=1.0,
              switch_prob=0.5, label_smoothing=0.1, correct_lam=True, num_groups=1):
  """Mixup/CutMix a batch. images [B, H, W, C] float, labels int [B] -> (images, soft targets [B, K]).

  Jit-able; `rng` a JAX key (one draw per batch). With both alphas 0 (or mixup_prob 0) the images are
  returned unchanged and the targets are the smoothed one-hot labels.
  """
  mixed, targets, _ = mix_batch_with_info(
      rng, images, labels, num_classes=num_classes, mixup_alpha=mixup_alpha,
      cutmix_alpha=cutmix_alpha, mixup_prob=mixup_prob, switch_prob=switch_prob,
      label_smoothing=label_smoothing, correct_lam=correct_lam, num_groups=num_groups)
  return mixed, targets
