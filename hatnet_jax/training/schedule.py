"""Run length and learning-rate schedule: durations in epochs or steps, linear warmup then cosine, poly or
step decay."""
from typing import TYPE_CHECKING

import jax.numpy as jnp
import optax

if TYPE_CHECKING:  # only for annotations: the GPU machine's image has no ml_collections
  import ml_collections


def to_steps(epochs: int | None, steps: int | None, steps_per_epoch: int, *, name: str = 'duration') -> int:
  """A duration given in epochs or in steps, in optimizer steps; `steps`, when set, wins over `epochs`.

  (The config sets the epoch form by default, so `--config.num_steps=100` alone switches to steps.)
  """
  if steps is not None:
    if steps < 0:
      raise ValueError(f'{name}: steps must be >= 0, got {steps}')
    return int(steps)
  if epochs is None:
    raise ValueError(f'{name}: set either the *_epochs or the *_steps field')
  if epochs < 0:
    raise ValueError(f'{name}: epochs must be >= 0, got {epochs}')
  return int(epochs) * int(steps_per_epoch)


def steps_per_epoch(num_train_examples: int, batch_size: int) -> int:
  """Full batches per pass over the training set (the last partial batch is dropped), at least 1."""
  return max(1, num_train_examples // batch_size)


def peak_learning_rate(config: 'ml_collections.ConfigDict') -> float:
  """The linear scaling rule of the recipe: base_lr x global batch / lr_base_batch."""
  return config.base_lr * config.batch_size / config.lr_base_batch


def poly_decay_schedule(init_value: float, decay_steps: int, end_value: float, power: float) -> optax.Schedule:
  """mmcv's 'poly' policy: (init - end) * (1 - step / decay_steps) ** power + end."""
  return optax.polynomial_schedule(init_value=init_value, end_value=end_value, power=power,
                                   transition_steps=max(decay_steps, 1))


def step_decay_schedule(init_value: float, milestones: list[int], factor: float, warmup_steps: int,
                        warmup_ratio: float) -> optax.Schedule:
  """mmcv's 'step' policy with its linear warmup (the mmdet 1x recipe): init x factor ** (milestones passed),
  times (ratio + (1 - ratio) x step / warmup) during the warmup. The warmup multiplies the decayed rate, as
  mmcv's LrUpdaterHook (and mmengine's LinearLR + MultiStepLR) do, rather than joining two schedules."""
  bounds = jnp.asarray(sorted(milestones), jnp.int32)

  def schedule(count):
    lr = init_value * factor ** jnp.sum(count >= bounds).astype(jnp.float32)
    if warmup_steps > 0:
      ramp = warmup_ratio + (1.0 - warmup_ratio) * jnp.asarray(count, jnp.float32) / warmup_steps
      lr = jnp.where(count < warmup_steps, lr * ramp, lr)
    return lr

  return schedule


def create_learning_rate_fn(config: 'ml_collections.ConfigDict', num_steps_per_epoch: int) -> optax.Schedule:
  """Per-step schedule: linear warmup from `warmup_lr` to the peak, then config.lr_schedule to `min_lr`:
  'cosine' (the classification recipe), 'poly' with config.lr_power (the segmentation recipe), or 'step'
  (the detection recipe: x config.lr_decay_factor at each of config.lr_milestone_epochs / _steps; there the
  warmup starts at config.warmup_ratio x the peak when that field is set).

  The step counts optimizer updates (one per global batch, gradient accumulation included); the decay
  spans the steps after the warmup, so the last step's learning rate is min_lr.
  """
  total = to_steps(config.num_epochs, config.num_steps, num_steps_per_epoch, name='num_epochs/num_steps')
  warmup = to_steps(config.warmup_epochs, config.warmup_steps, num_steps_per_epoch, name='warmup_epochs/warmup_steps')
  warmup = min(warmup, total)
  peak = peak_learning_rate(config)
  kind = config.get('lr_schedule', 'cosine')
  if kind == 'step':
    steps, epochs = config.get('lr_milestone_steps'), config.get('lr_milestone_epochs')
    if steps is None and epochs is None:
      raise ValueError("lr_schedule='step' needs config.lr_milestone_epochs or config.lr_milestone_steps")
    milestones = ([to_steps(None, m, num_steps_per_epoch, name='lr_milestone_steps') for m in steps]
                  if steps is not None else
                  [to_steps(m, None, num_steps_per_epoch, name='lr_milestone_epochs') for m in epochs])
    ratio = config.get('warmup_ratio')
    ratio = (config.warmup_lr / peak if peak else 0.0) if ratio is None else ratio
    return step_decay_schedule(peak, milestones, config.lr_decay_factor, warmup, ratio)
  if kind == 'cosine':
    decay = optax.cosine_decay_schedule(init_value=peak, decay_steps=max(total - warmup, 1),
                                        alpha=config.min_lr / peak if peak else 0.0)
  elif kind == 'poly':
    decay = poly_decay_schedule(peak, total - warmup, config.min_lr, config.lr_power)
  else:
    raise ValueError(f"config.lr_schedule must be 'cosine', 'poly' or 'step'; got {kind!r}")
  if warmup == 0:
    return decay
  linear = optax.linear_schedule(init_value=config.warmup_lr, end_value=peak, transition_steps=warmup)
  return optax.join_schedules([linear, decay], boundaries=[warmup])
