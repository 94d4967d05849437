"""The bare model step model_speed.py times beside the trainer's: forward, backward and optax.adamw on plain
cross-entropy, laid out and donated like the trainer's step (model_speed.py's docstring)."""
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from hatnet_jax import layout
from hatnet_jax.training import experiment, optim


def bare_train_step(exp: experiment.Experiment):
  """(jitted step (state, batch) -> (state, loss), init () -> state) of the bare model step: forward, backward
  and optax.adamw with the config's schedule, betas, eps and weight decay (and its mask) on integer-label
  cross-entropy; no mixup, EMA, non-finite guard or norms. state = (params, opt_state, model_state, rng),
  laid out like the trainer's state (layout.state_shardings); the step donates it."""
  config, model, mesh = exp.config, exp.model, exp.mesh
  kernels_only = config.get('weight_decay_on', 'kernels') == 'kernels'
  tx = optax.adamw(exp.learning_rate_fn, b1=config.b1, b2=config.b2, eps=config.eps,
                   weight_decay=config.weight_decay, mask=optim.weight_decay_mask if kernels_only else None)
  ignore_index = config.data.ignore_index if exp.task.name == 'segmentation' else None
  mutable = list(exp.abstract_state.model_state)
  replicated = NamedSharding(mesh, P())
  opt_shapes = jax.eval_shape(tx.init, exp.abstract_state.params)
  shardings = (exp.shardings.params, layout.state_shardings(opt_shapes, mesh, config), exp.shardings.model_state,
               exp.shardings.rng)

  def step(state, batch):
    params, opt_state, model_state, rng = state
    rng, dropout_rng = jax.random.split(rng)

    def loss_fn(p):
      variables = {'params': p, **model_state}
      if mutable:
        logits, new_model_state = model.apply(variables, batch['image'], train=True, rngs={'dropout': dropout_rng},
                                              mutable=mutable)
      else:
        logits, new_model_state = model.apply(variables, batch['image'], train=True,
                                              rngs={'dropout': dropout_rng}), model_state
      logits, labels = logits.astype(jnp.float32), batch['label']
      if ignore_index is None:
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels)), new_model_state
      valid = labels != ignore_index
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
      return jnp.sum(jnp.where(valid, ce, 0.0)) / labels.size, new_model_state

    (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, dict(model_state), rng), loss

  jitted = jax.jit(step, in_shardings=(shardings, layout.data_sharding(mesh)), out_shardings=(shardings, replicated),
                   donate_argnums=(0,), compiler_options=exp.compiler_options)

  def init():
    fresh = exp.init_state()
    opt_state = jax.jit(tx.init, out_shardings=shardings[1])(fresh.params)
    return fresh.params, opt_state, dict(fresh.model_state), fresh.rng

  return jitted, init
