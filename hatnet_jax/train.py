"""Training and evaluation of HAT-Net: one jitted train step over a device mesh, orbax checkpoints, clu metrics.

Layout: a 1-D Mesh over all devices of all processes with axis 'data'. The batch is split over 'data';
parameters, optimizer state and EMA are replicated, or (config.shard_params) split FSDP-style over the
same axis. The train step donates the state, so only one copy lives on the devices.

Determinism: the random key of step s is fold_in(state.rng, s) and the input pipeline is a function of
(seed, step), so a run restored at step s continues exactly like the uninterrupted one.
"""
import functools
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hatnet_jax import checkpoint
from hatnet_jax import data
from hatnet_jax import models
from hatnet_jax import monitor
from hatnet_jax import optim
from hatnet_jax import preemption
from hatnet_jax import run_record
from hatnet_jax import schedule

DATA_AXIS = 'data'
MODES = ('train', 'eval')
TOP_K = 5  # eval reports top-1 and top-k accuracy


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32: optimizer updates done
  params: Any
  opt_state: Any
  ema_params: Any  # None when config.ema_decay == 0
  rng: jax.Array  # base key; step s uses fold_in(rng, s)
  nonfinite_step: jax.Array  # int32: -1, or the first step whose loss/gradients were NaN/inf (updates stop)


def create_mesh(devices=None) -> Mesh:
  """A 1-D mesh with axis 'data' over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """The HAT-Net of config.model (+ config.model_overrides); raises ValueError on an unknown name."""
  return models.create(config.model, num_classes=num_classes, drop_path_rate=config.drop_path_rate,
                       drop_rate=config.drop_rate, head_drop_rate=config.head_drop_rate, dtype=config.dtype,
                       param_dtype=config.param_dtype, remat=config.remat,
                       attention_impl=config.attention_impl or None, **config.model_overrides.to_dict())


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Errors for settings that cannot work, raised before anything is compiled or loaded."""
  if config.mode not in MODES:
    raise ValueError(f'config.mode must be one of {MODES}; got {config.mode!r}')
  if config.grad_accum_steps < 1:
    raise ValueError(f'config.grad_accum_steps must be >= 1; got {config.grad_accum_steps}')
  per_step = num_devices * config.grad_accum_steps
  if config.batch_size <= 0 or config.batch_size % per_step:
    raise ValueError(
        f'config.batch_size={config.batch_size} (global) must be a positive multiple of the device count '
        f'({num_devices}, all processes) x config.grad_accum_steps ({config.grad_accum_steps}) = {per_step}')
  if config.model not in models.names():
    raise ValueError(f'unknown model {config.model!r} (config.model); choose one of {models.names()}')
  create_model(config, num_classes=1)  # checks config.model_overrides and the other model settings
  if config.init_from and not os.path.isdir(config.init_from):
    raise FileNotFoundError(f'config.init_from={config.init_from!r} is not a directory')
  for name in ('log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints'):
    if config[name] < 1:
      raise ValueError(f'config.{name} must be >= 1; got {config[name]}')


# ---------------------------------------------------------------------------------------------------------
# Steps.


def soft_target_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example cross-entropy against soft targets (mixup/cutmix, label smoothing), in float32."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(targets.astype(jnp.float32) * log_probs, axis=-1)


def global_norm(tree) -> jax.Array:
  """L2 norm over all leaves, accumulated in float32."""
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def _split_microbatches(x: jax.Array, k: int, mesh: Mesh) -> jax.Array:
  """[B, ...] -> [k, B/k, ...]; microbatch i takes rows i, i+k, ..., so each stays split over all devices."""
  x = jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, DATA_AXIS)))


def train_step(state: TrainState, batch: dict, *, model: nn.Module, tx: optax.GradientTransformation,
               learning_rate_fn: optax.Schedule, config: ml_collections.ConfigDict, num_classes: int,
               mesh: Mesh) -> tuple[TrainState, dict]:
  """One optimizer update on a global batch {'image': f32 [B,S,S,3], 'label': int32 [B]}.

  Mixup/cutmix and label smoothing happen here (data.mixup.mix_batch); with grad_accum_steps = k the
  batch is split into k microbatches whose gradients are averaged. If the loss or the gradients are not
  finite, the parameters are left as they were and `nonfinite_step` records the step (the host stops).
  """
  step_rng = jax.random.fold_in(state.rng, state.step)
  mix_rng, dropout_rng = jax.random.split(step_rng)
  labels = batch['label']
  images, targets = data.mixup.mix_batch(
      mix_rng, batch['image'], labels, num_classes=num_classes, mixup_alpha=config.data.mixup_alpha,
      cutmix_alpha=config.data.cutmix_alpha, mixup_prob=config.data.mixup_prob,
      switch_prob=config.data.mixup_switch_prob, label_smoothing=config.data.label_smoothing)

  def loss_fn(params, images, targets, labels, rng):
    logits = model.apply({'params': params}, images, train=True, rngs={'dropout': rng})
    loss = jnp.mean(soft_target_cross_entropy(logits, targets))
    correct = jnp.sum(jnp.argmax(logits, axis=-1) == labels)
    return loss, correct

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  k = config.grad_accum_steps
  if k == 1:
    (loss, correct), grads = grad_fn(state.params, images, targets, labels, dropout_rng)
  else:
    micro = [_split_microbatches(x, k, mesh) for x in (images, targets, labels)]

    def accumulate(carry, xs):
      grads_sum, loss_sum, correct_sum = carry
      i, images_i, targets_i, labels_i = xs
      (loss_i, correct_i), grads_i = grad_fn(state.params, images_i, targets_i, labels_i,
                                             jax.random.fold_in(dropout_rng, i))
      grads_sum = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grads_sum, grads_i)
      return (grads_sum, loss_sum + loss_i, correct_sum + correct_i), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
    init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
    (grads, loss, correct), _ = jax.lax.scan(accumulate, init, (jnp.arange(k),) + tuple(micro))
    grads = jax.tree.map(lambda g, p: (g / k).astype(p.dtype), grads, state.params)
    loss = loss / k

  grad_norm = global_norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  param_norm = global_norm(params)
  ema_params = state.ema_params
  if ema_params is not None:
    decay = config.ema_decay
    ema_params = jax.tree.map(lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype), ema_params, params)

  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(param_norm)
  ok = finite & (state.nonfinite_step < 0)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
  new_state = state.replace(
      step=state.step + 1,
      params=keep(params, state.params),
      opt_state=keep(opt_state, state.opt_state),
      ema_params=None if ema_params is None else keep(ema_params, state.ema_params),
      nonfinite_step=jnp.where((state.nonfinite_step < 0) & ~finite, state.step, state.nonfinite_step))
  metrics = {
      'train_loss': loss,
      'train_accuracy': correct.astype(jnp.float32) / labels.shape[0],
      'learning_rate': learning_rate_fn(state.step),
      'grad_norm': grad_norm,
      'param_norm': param_norm,
  }
  return new_state, metrics


def eval_step(params: Any, ema_params: Any, batch: dict, *, model: nn.Module) -> dict:
  """Sums over a padded eval batch {'image', 'label', 'mask'}: loss, top-1, top-k hits and the count;
  the same for the EMA weights (keys 'ema_*') when `ema_params` is not None."""
  labels, mask = batch['label'], batch['mask'].astype(jnp.float32)

  def sums(p, prefix):
    logits = model.apply({'params': p}, batch['image'], train=False).astype(jnp.float32)
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    loss = soft_target_cross_entropy(logits, one_hot)
    top1 = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    _, top_k = jax.lax.top_k(logits, min(TOP_K, logits.shape[-1]))
    topk = jnp.any(top_k == labels[:, None], axis=-1).astype(jnp.float32)
    return {f'{prefix}loss': jnp.sum(loss * mask), f'{prefix}top1': jnp.sum(top1 * mask),
            f'{prefix}top{TOP_K}': jnp.sum(topk * mask)}

  out = sums(params, '')
  if ema_params is not None:
    out.update(sums(ema_params, 'ema_'))
  out['count'] = jnp.sum(mask)
  return out


# ---------------------------------------------------------------------------------------------------------
# State creation and layout.


def state_shardings(abstract_state: Any, mesh: Mesh, config: ml_collections.ConfigDict) -> Any:
  """Replicated everywhere, or (config.shard_params) each array of at least shard_params_min_size
  elements split along its largest dimension divisible by the device count."""
  replicated = NamedSharding(mesh, P())

  def leaf(x):
    if not config.shard_params or x.ndim == 0 or x.size < config.shard_params_min_size:
      return replicated
    for dim in sorted(range(x.ndim), key=lambda d: -x.shape[d]):
      if x.shape[dim] % mesh.size == 0:
        spec = [None] * x.ndim
        spec[dim] = DATA_AXIS
        return NamedSharding(mesh, P(*spec))
    return replicated

  return jax.tree.map(leaf, abstract_state)


def _init_fn(config, model, tx, image_size):
  """A function rng -> TrainState at step 0 (freshly initialised parameters)."""

  def init(rng):
    init_rng, train_rng = jax.random.split(rng)
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    params = model.init({'params': init_rng}, images, train=False)['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema_params=params if config.ema_decay > 0 else None, rng=train_rng,
                      nonfinite_step=jnp.full((), -1, jnp.int32))

  return init


def abstract_train_state(config, model, tx, mesh) -> tuple[Any, Any]:
  """(abstract TrainState with shardings, the shardings): the layout restores and the jitted step use."""
  init = _init_fn(config, model, tx, config.data.image_size)
  shapes = jax.eval_shape(init, jax.random.PRNGKey(config.seed))
  shardings = state_shardings(shapes, mesh, config)
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
  return abstract, shardings


def create_train_state(config, model, tx, mesh, *, require_all: bool = False) -> TrainState:
  """A fresh TrainState laid out on `mesh`; params from config.init_from (fresh head) when set.

  require_all (evaluation): every parameter, the head included, must come from config.init_from."""
  _, shardings = abstract_train_state(config, model, tx, mesh)
  init = jax.jit(_init_fn(config, model, tx, config.data.image_size), out_shardings=shardings)
  state = init(jax.random.PRNGKey(config.seed))
  if config.init_from:
    params = checkpoint.load_params(config.init_from, state.params, require_all=require_all)
    # The optimizer state at step 0 does not depend on the parameter values (zeros), so it stays.
    state = state.replace(params=params, ema_params=params if state.ema_params is not None else None)
  return state


def jit_train_step(config, model, tx, learning_rate_fn, mesh: Mesh, shardings, num_classes: int):
  """`train_step` jitted: (state, batch) -> (state, metrics); batch split over 'data', the state donated."""
  return jax.jit(
      functools.partial(train_step, model=model, tx=tx, learning_rate_fn=learning_rate_fn, config=config,
                        num_classes=num_classes, mesh=mesh),
      in_shardings=(shardings, NamedSharding(mesh, P(DATA_AXIS))),
      out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=(0,))


def jit_eval_step(model, mesh: Mesh, shardings):
  """`eval_step` jitted: (params, ema_params, batch) -> replicated sums."""
  return jax.jit(functools.partial(eval_step, model=model),
                 in_shardings=(shardings.params, shardings.ema_params, NamedSharding(mesh, P(DATA_AXIS))),
                 out_shardings=NamedSharding(mesh, P()))


# ---------------------------------------------------------------------------------------------------------
# Loop.


def _durations(config, num_train_examples: int) -> dict[str, int]:
  per_epoch = schedule.steps_per_epoch(num_train_examples, config.batch_size)
  num_steps = schedule.to_steps(config.num_epochs, config.num_steps, per_epoch, name='num_epochs/num_steps')
  eval_every = schedule.to_steps(config.eval_every_epochs, config.eval_every_steps, per_epoch,
                                 name='eval_every_epochs/eval_every_steps')
  return dict(steps_per_epoch=per_epoch, num_steps=num_steps, eval_every=max(eval_every, 1))


def evaluate(p_eval_step, state: TrainState, config: ml_collections.ConfigDict, mesh: Mesh) -> dict[str, float]:
  """One pass over the eval split: {'eval_loss', 'eval_top1', 'eval_top5'} (+ 'eval_ema_*')."""
  totals = None
  eval_it = data.create_eval_iterator(config, mesh)
  try:
    for batch in eval_it:
      sums = p_eval_step(state.params, state.ema_params, batch)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  finally:
    eval_it.close()
  if totals is None:
    raise ValueError(f'the eval split {config.data.eval_split!r} of {config.data.dataset!r} is empty')
  totals = jax.device_get(totals)
  count = float(totals.pop('count'))
  return {f'eval_{k}': float(v) / count for k, v in totals.items()}


def _nonfinite_error(state: TrainState, ckpt: checkpoint.CheckpointManager) -> FloatingPointError | None:
  bad = int(jax.device_get(state.nonfinite_step))
  if bad < 0:
    return None
  return FloatingPointError(
      f'The loss, gradients or parameters became NaN/inf in the update from step {bad} to {bad + 1}; '
      f'training stopped. That update and all later ones were discarded and no checkpoint was written '
      f'after step {bad}: the last good checkpoint is step {ckpt.latest_step()} in {ckpt.directory}. '
      f"Try a lower base_lr, grad_clip_norm > 0 or dtype='float32'.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains (config.mode='train') with periodic eval and checkpoints in `workdir`, resuming from the latest
  checkpoint there; or (config.mode='eval') evaluates the latest checkpoint (or config.init_from) once.

  Returns the final TrainState.
  """
  workdir = os.path.abspath(workdir)
  mesh = create_mesh()
  # Everything that can be wrong with the settings fails here, before compiling or loading anything.
  validate_config(config, mesh.size)
  info = data.dataset_info(config.data)
  model = create_model(config, info.num_classes)
  durations = _durations(config, info.num_train)
  num_steps = durations['num_steps']
  learning_rate_fn = schedule.create_learning_rate_fn(config, durations['steps_per_epoch'])
  tx = optim.create_optimizer(config, learning_rate_fn)
  logging.info('%s on %s: %d classes, %d train / %d eval images; %d steps (%d per epoch) of %d images on %d '
               'devices (%d processes).', config.model, info.name, info.num_classes, info.num_train,
               info.num_eval, num_steps, durations['steps_per_epoch'], config.batch_size, mesh.size,
               jax.process_count())

  os.makedirs(workdir, exist_ok=True)
  watcher = preemption.PreemptionWatcher()
  writer = monitor.create_writer(workdir)
  ckpt = checkpoint.CheckpointManager(os.path.join(workdir, 'checkpoints'), max_to_keep=config.keep_checkpoints,
                                      keep_best=config.keep_best_checkpoint)
  train_it = None
  record = run_record.RunRecord(workdir, active=config.mode == 'train')  # DIR/run.json
  run_status, run_error = 'finished', None
  try:
    abstract_state, shardings = abstract_train_state(config, model, tx, mesh)
    p_eval_step = jit_eval_step(model, mesh, shardings)

    if ckpt.latest_step() is not None:
      state = ckpt.restore(abstract_state)
    elif config.mode == 'eval':
      if not config.init_from:
        raise FileNotFoundError(f'config.mode=eval: no checkpoint in {ckpt.directory} and no config.init_from')
      state = create_train_state(config, model, tx, mesh, require_all=True)
    else:
      state = create_train_state(config, model, tx, mesh)
    start_step = int(jax.device_get(state.step))

    if config.mode == 'eval':
      metrics = evaluate(p_eval_step, state, config, mesh)
      writer.write_scalars(start_step, metrics)
      logging.info('Eval at step %d: top-1 %.2f%%, top-%d %.2f%%, loss %.4f', start_step,
                   100 * metrics['eval_top1'], TOP_K, 100 * metrics[f'eval_top{TOP_K}'], metrics['eval_loss'])
      if 'eval_ema_top1' in metrics:
        logging.info('EMA weights: top-1 %.2f%%, top-%d %.2f%%', 100 * metrics['eval_ema_top1'], TOP_K,
                     100 * metrics[f'eval_ema_top{TOP_K}'])
      return state

    record.start(num_steps=num_steps, steps_per_epoch=durations['steps_per_epoch'], task='classification',
                 hparams=monitor.hparams(config), step=start_step)
    if start_step == 0:
      writer.write_hparams(monitor.hparams(config))
    p_train_step = jit_train_step(config, model, tx, learning_rate_fn, mesh, shardings, info.num_classes)
    train_it = data.create_train_iterator(config, mesh, start_step=start_step)
    progress, hooks = monitor.create_hooks(config, workdir, writer, num_steps)
    logging.info('Training from step %d to %d.', start_step, num_steps)

    pending, t_interval, steps_interval = [], time.time(), 0
    for step in range(start_step, num_steps):
      batch = next(train_it)
      done = step + 1
      if (config.log_images_every_steps > 0 and jax.process_index() == 0
          and (step == start_step or done % config.log_images_every_steps == 0)):
        images = monitor.local_rows(batch['image'], config.log_images_count)
        writer.write_images(done, {'train_images': monitor.images_for_display(
            images, config.data.mean, config.data.std)})
      state, metrics = p_train_step(state, batch)
      pending.append(metrics)
      steps_interval += 1
      if step == start_step:  # exclude compilation from the throughput figures
        jax.block_until_ready(metrics)
        logging.info('First step (compilation included) took %.1fs.', time.time() - t_interval)
        t_interval, steps_interval = time.time(), 0
      for hook in hooks:
        hook(done)

      if pending and (done % config.log_every_steps == 0 or done == num_steps):
        summary = monitor.mean_metrics(pending)
        elapsed = time.time() - t_interval
        if steps_interval and elapsed > 0:
          summary['images_per_sec'] = steps_interval * config.batch_size / elapsed
          summary['images_per_sec_per_device'] = summary['images_per_sec'] / mesh.size
        summary['epoch'] = done / durations['steps_per_epoch']
        summary['train_skipped_images'] = train_it.num_skipped
        writer.write_scalars(done, summary)
        record.update(step=done)
        pending, t_interval, steps_interval = [], time.time(), 0
        if (error := _nonfinite_error(state, ckpt)) is not None:
          raise error

      eval_metrics = None
      if done % durations['eval_every'] == 0 or done == num_steps:
        with progress.timed('eval'):
          eval_metrics = evaluate(p_eval_step, state, config, mesh)
        writer.write_scalars(done, eval_metrics)
        record.update(step=done, eval_metrics=eval_metrics, best_metric_name='eval_top1')
        logging.info('Eval at step %d: top-1 %.2f%%, top-%d %.2f%%', done, 100 * eval_metrics['eval_top1'],
                     TOP_K, 100 * eval_metrics[f'eval_top{TOP_K}'])

      preempted = watcher.reached(done)
      if (preempted or done % config.checkpoint_every_steps == 0 or done == num_steps
          or (eval_metrics is not None and config.keep_best_checkpoint)):
        if (error := _nonfinite_error(state, ckpt)) is not None:
          raise error
        best = None if eval_metrics is None else {checkpoint.BEST_METRIC: eval_metrics['eval_top1']}
        ckpt.save(done, state, metrics=best)
        record.update(step=done, checkpoint_step=done)
      if preempted:
        run_status = 'preempted'
        logging.warning('Preempted: saved a checkpoint at step %d in %s; exiting.', done, ckpt.directory)
        break
    writer.flush()
    return state
  except BaseException as e:
    run_status, run_error = run_record.status_of(e)
    raise
  finally:
    if train_it is not None:
      train_it.close()
    ckpt.close()
    watcher.close()
    writer.close()
    record.finish(run_status, run_error)  # after the checkpoints and metrics are on disk
