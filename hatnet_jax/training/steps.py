"""The pure-JAX part of training: TrainState, the optimizer update around a task's loss (gradient
accumulation, EMA, the non-finite guard) and the eval step. No data, monitoring or TensorFlow imports,
so benchmarks and notebooks import only this (and `experiment` to build a run).

Determinism: the random key of step s is fold_in(state.rng, s), so a run restored at step s continues
exactly like the uninterrupted one.
"""
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hatnet_jax.layout import DATA_AXIS


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32: optimizer updates done
  params: Any
  opt_state: Any
  ema_params: Any  # None when config.ema_decay == 0
  rng: jax.Array  # base key; step s uses fold_in(rng, s)
  nonfinite_step: jax.Array  # int32: -1, or the first step whose loss/gradients were NaN/inf (updates stop)
  model_state: Any = flax.struct.field(default_factory=dict)  # mutable collections, e.g. {'batch_stats': ...}

  def variables(self, params=None) -> dict:
    """{'params': ..., **model_state}: what `model.apply` takes (with `params` instead, e.g. the EMA)."""
    return {'params': self.params if params is None else params, **self.model_state}


def global_norm(tree) -> jax.Array:
  """L2 norm over all leaves, accumulated in float32."""
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def _split_microbatches(x: jax.Array, k: int, mesh: Mesh) -> jax.Array:
  """[B, ...] -> [k, B/k, ...]; microbatch i takes rows i, i+k, ..., so each stays split over all devices."""
  x = jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, DATA_AXIS)))


def accumulate_gradients(loss_fn: Callable, params: Any, model_state: Any, batch: dict, rng: jax.Array, k: int,
                         mesh: Mesh) -> tuple[Any, dict, Any]:
  """(gradients, metrics, model_state) of `loss_fn(params, model_state, batch, rng) -> (loss, (metrics,
  model_state))` averaged over k microbatches (k = 1: one plain call). Microbatch i uses fold_in(rng, i)
  and the model state left by microbatch i - 1; gradients are summed in float32."""
  grad_fn = jax.grad(loss_fn, has_aux=True)
  if k == 1:
    grads, (metrics, new_state) = grad_fn(params, model_state, batch, rng)
    return grads, metrics, new_state
  micro = jax.tree.map(lambda x: _split_microbatches(x, k, mesh), batch)

  def body(carry, xs):
    grads_sum, metrics_sum, state = carry
    i, batch_i = xs
    grads_i, (metrics_i, state) = grad_fn(params, state, batch_i, jax.random.fold_in(rng, i))
    grads_sum = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grads_sum, grads_i)
    return (grads_sum, jax.tree.map(jnp.add, metrics_sum, metrics_i), state), None

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  metric_shapes = jax.eval_shape(lambda: grad_fn(params, model_state, jax.tree.map(lambda x: x[0], micro),
                                                 rng)[1][0])
  metric_zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes)
  (grads, metrics, new_state), _ = jax.lax.scan(body, (zeros, metric_zeros, model_state), (jnp.arange(k), micro))
  grads = jax.tree.map(lambda g, p: (g / k).astype(p.dtype), grads, params)
  return grads, jax.tree.map(lambda m: m / k, metrics), new_state


def train_step(state: TrainState, batch: dict, *, task, model: nn.Module, tx: optax.GradientTransformation,
               learning_rate_fn: optax.Schedule, num_classes: int, grad_accum_steps: int, ema_decay: float,
               mesh: Mesh) -> tuple[TrainState, dict]:
  """One optimizer update on a global batch: the task's batch preparation and loss, gradients averaged
  over `grad_accum_steps` microbatches, AdamW (tx), EMA. If the loss or the gradients are not finite, the
  state is left as it was and `nonfinite_step` records the step (the host then stops)."""
  prepare_rng, dropout_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
  batch = task.prepare_train_batch(prepare_rng, batch, num_classes)
  mutable = tuple(state.model_state)

  def loss_fn(params, model_state, batch, rng):
    loss, (metrics, new_state) = task.train_loss(model, {'params': params, **model_state}, batch, rng, mutable)
    return loss, (metrics, new_state)

  grads, metrics, model_state = accumulate_gradients(loss_fn, state.params, state.model_state, batch,
                                                     dropout_rng, grad_accum_steps, mesh)
  grad_norm = global_norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  param_norm = global_norm(params)
  ema_params = state.ema_params
  if ema_params is not None:
    ema_params = jax.tree.map(lambda e, p: (ema_decay * e + (1.0 - ema_decay) * p).astype(e.dtype),
                              ema_params, params)

  finite = jnp.isfinite(metrics['train_loss']) & jnp.isfinite(grad_norm) & jnp.isfinite(param_norm)
  ok = finite & (state.nonfinite_step < 0)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
  new_state = state.replace(
      step=state.step + 1,
      params=keep(params, state.params),
      opt_state=keep(opt_state, state.opt_state),
      ema_params=None if ema_params is None else keep(ema_params, state.ema_params),
      model_state=keep(model_state, state.model_state),
      nonfinite_step=jnp.where((state.nonfinite_step < 0) & ~finite, state.step, state.nonfinite_step))
  metrics = dict(metrics, learning_rate=learning_rate_fn(state.step), grad_norm=grad_norm, param_norm=param_norm)
  return new_state, metrics


def eval_step(state: TrainState, batch: dict, *, task, model: nn.Module) -> dict[str, Any]:
  """The task's eval outputs (`Task.eval_outputs`) for the weights ('') and, when kept, their EMA ('ema_')."""
  out = {'': task.eval_outputs(model, state.variables(), batch)}
  if state.ema_params is not None:
    out['ema_'] = task.eval_outputs(model, state.variables(state.ema_params), batch)
  return out
