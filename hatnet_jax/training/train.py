"""The training loop: steps, logging, evaluation, checkpoints, preemption. It knows no task.

    train.train_and_evaluate(config, workdir)   # config.mode 'train' (default) or 'eval'

The run is built by `experiment.Experiment` (task, model, optimizer, jitted steps); the task
(`hatnet_jax.tasks`) owns the data, loss and metrics. Nothing is lost on an interruption: SIGTERM or
Ctrl-C save a checkpoint at the step reached, every evaluation is preceded by a checkpoint of its step,
a damaged newest checkpoint is moved aside and the previous one resumed, and on any error the data
threads, the asynchronous checkpoint writer and the TensorBoard writer are closed in that order.
"""
import contextlib
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from hatnet_jax import layout
from hatnet_jax.training import checkpoint
from hatnet_jax.training import compile_cache
from hatnet_jax.training import experiment
from hatnet_jax.training import host_memory
from hatnet_jax.training import monitor
from hatnet_jax.training import preemption
from hatnet_jax.training import run_record
from hatnet_jax.training import steps
from hatnet_jax.visualization import images as pictures


class WorkdirError(OSError):
  """--workdir cannot be used (not creatable, not writable, or a file)."""


def prepare_workdir(workdir: str) -> str:
  """The absolute workdir, created; WorkdirError saying why when it cannot be written."""
  path = os.path.abspath(workdir)
  try:
    if os.path.exists(path) and not os.path.isdir(path):
      raise WorkdirError(f'--workdir={path} is a file; give a directory (it is created if missing).')
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f'.write_test_{os.getpid()}')
    with open(probe, 'w'):
      pass
    os.remove(probe)
  except WorkdirError:
    raise
  except OSError as e:
    raise WorkdirError(f'--workdir={path} cannot be written ({e.strerror or e}); choose a directory you can '
                       f'write to (it is created if missing).') from None
  return path


def evaluate(exp: experiment.Experiment, state: steps.TrainState) -> dict[str, Any]:
  """One pass over the eval split: the task's metrics as 'eval_<name>' (and 'eval_ema_<name>' with EMA).

  Each batch's eval outputs (a pytree per weight set) come to the host as NumPy arrays, whole on every
  process, and go into that weight set's `exp.task.eval_accumulator()`; its `result()` is the metrics."""
  accumulators, pending = {}, None

  def add(outputs):
    for prefix, tree in jax.tree.map(np.asarray, jax.device_get(outputs)).items():
      if prefix not in accumulators:
        accumulators[prefix] = exp.task.eval_accumulator()
      accumulators[prefix].add(tree)

  eval_it = exp.task.eval_iterator(exp.mesh)
  try:
    for batch in eval_it:
      outputs = _whole_on_each_process(exp.eval_step(state, batch), exp.mesh)
      if pending is not None:
        add(pending)  # fetch the previous batch's outputs while this one computes
      pending = outputs
  finally:
    eval_it.close()
  if pending is None:
    raise ValueError(f'the eval split of {exp.facts.name} is empty (config.data.eval_split)')
  add(pending)
  host_memory.release_freed_memory()  # the eval step's compilation, the first time (see _compiled)
  metrics = {}
  for prefix, accumulator in accumulators.items():
    metrics.update({f'eval_{prefix}{k}': v for k, v in accumulator.result().items()})
  return metrics


def _identity(x):
  return x  # at module level, so that the jitted gather below compiles once per shape


def _whole_on_each_process(tree, mesh):
  """`tree` with every leaf split over several processes (e.g. per-example outputs, sharded along the batch)
  replicated over the mesh, as `multihost_utils.process_allgather(x, tiled=True)` does, but dispatched
  asynchronously so the fetch still overlaps the next step; then every leaf can be fetched whole on every
  process. Single-process: unchanged (jax.device_get assembles the shards, no device communication)."""
  if jax.process_count() == 1:
    return tree
  replicated = NamedSharding(mesh, P())

  def gather(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
      return x
    return jax.jit(_identity, out_shardings=replicated)(x)

  return jax.tree.map(gather, tree)


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
  """The numeric scalars of a task's metrics (arrays, texts and lists are for its own summaries)."""
  return {k: float(v) for k, v in metrics.items()
          if not isinstance(v, (str, bytes)) and np.ndim(v) == 0 and np.issubdtype(np.asarray(v).dtype, np.number)}


def _task_metrics(metrics: dict[str, Any], prefix: str = 'eval_') -> dict[str, Any]:
  return {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix) and not k.startswith('eval_ema_')}


def _nonfinite_error(state: steps.TrainState, ckpt: checkpoint.CheckpointManager) -> FloatingPointError | None:
  bad = int(jax.device_get(state.nonfinite_step))
  if bad < 0:
    return None
  return FloatingPointError(
      f'The loss, gradients or parameters became NaN/inf in the update from step {bad} to {bad + 1}; '
      f'training stopped. That update and all later ones were discarded and no checkpoint was written '
      f'after step {bad}: the last good checkpoint is step {ckpt.latest_step()} in {ckpt.directory}. '
      f"Try a lower base_lr, grad_clip_norm > 0 or config.model.dtype='float32'.")


def _log_run(exp: experiment.Experiment, what: str):
  c, f = exp.config, exp.facts
  logging.info('%s %s (%s) on %s: %d classes, %d train / %d eval examples; %d devices (%d processes).', what,
               c.model.name, exp.task.name, f.name, f.num_classes, f.num_train, f.num_eval, exp.mesh.size,
               jax.process_count())


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> steps.TrainState:
  """config.mode='eval': evaluates the latest checkpoint in `workdir` (or config.init_from) once."""
  exp = experiment.Experiment.create(config)
  ckdir = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if not checkpoint.has_steps(ckdir) and not config.init_from:
    raise FileNotFoundError(f'config.mode=eval: no checkpoint in {ckdir} and no config.init_from; train first '
                            f'or point --config.init_from at converted weights.')
  workdir = prepare_workdir(workdir)
  exp.task.workdir = workdir
  compile_cache.configure(config.compilation_cache_dir)
  _log_run(exp, 'Evaluating')
  with contextlib.ExitStack() as stack:
    writer = monitor.create_writer(workdir)
    stack.callback(writer.close)
    ckpt = checkpoint.CheckpointManager(ckdir, max_to_keep=config.keep_checkpoints, keep_best=False)
    stack.callback(ckpt.close)
    state = ckpt.restore_latest(exp.abstract_state)
    if state is None:
      state = exp.init_state(require_all=True)
      logging.info('Evaluating the weights of %s.', config.init_from)
    step = int(jax.device_get(state.step))
    metrics = evaluate(exp, state)
    writer.write_scalars(step, _scalars(metrics))
    exp.task.write_eval_summaries(writer, step, _task_metrics(metrics), state.variables(), exp.model, exp.mesh)
    logging.info('Evaluation of step %d: %s', step, exp.task.describe(_task_metrics(metrics)))
    if state.ema_params is not None:
      logging.info('EMA weights: %s', exp.task.describe(_task_metrics(metrics, 'eval_ema_')))
  return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> steps.TrainState:
  """Trains (config.mode='train') with periodic evaluation and checkpoints in `workdir`, resuming from the
  latest checkpoint there; or (config.mode='eval') evaluates once. Returns the final TrainState.

  Raises preemption.Interrupted after Ctrl-C (the checkpoint of the reached step is committed first).
  """
  if config.mode == 'eval':
    return evaluate_checkpoint(config, workdir)
  exp = experiment.Experiment.create(config)  # every settings error surfaces here, before compiling
  workdir = prepare_workdir(workdir)
  exp.task.workdir = workdir
  # JAX's persistent compilation cache, before the steps compile (main.py has set it up already, before
  # anything compiled; this call is for other callers and then only restarts the cache's counts).
  compile_cache.configure(config.compilation_cache_dir)
  _log_run(exp, 'Training')
  record = run_record.RunRecord(workdir)  # DIR/run.json: what sweeps and other tools read
  if exp.facts.class_names and jax.process_index() == 0:  # for `python -m hatnet_jax.tools.predict --weights=DIR`
    with open(os.path.join(workdir, 'class_names.txt'), 'w') as f:
      f.write('\n'.join(exp.facts.class_names) + '\n')
  try:
    state, loop = _train(exp, workdir, record)
  except BaseException as e:
    record.fail(e)
    raise
  record.finish('finished' if loop.stopped is None else 'interrupted' if loop.watcher.interrupted else 'preempted',
                step=int(jax.device_get(state.step)))
  loop.report_end(state)
  return state


def _train(exp, workdir, record):
  """The body of `train_and_evaluate`: (final state, the loop)."""
  config = exp.config
  with contextlib.ExitStack() as stack:  # closed in reverse: data threads, checkpoints, writer, signals
    watcher = stack.enter_context(preemption.StopWatcher())
    writer = monitor.create_writer(workdir)
    stack.callback(writer.close)
    ckpt = checkpoint.CheckpointManager(os.path.join(workdir, 'checkpoints'), max_to_keep=config.keep_checkpoints,
                                        keep_best=config.keep_best_checkpoint, best_metric=exp.task.best_metric)
    stack.callback(ckpt.close)
    state = ckpt.restore_latest(exp.abstract_state)
    state = exp.init_state() if state is None else state
    start_step = int(jax.device_get(state.step))
    hparams = monitor.hparams(config)
    if start_step == 0:
      writer.write_hparams(hparams)
    record.start(num_steps=exp.num_steps, steps_per_epoch=exp.steps_per_epoch, task=exp.task.name, hparams=hparams,
                 step=start_step)
    train_it = exp.task.train_iterator(exp.mesh, start_step)
    stack.callback(train_it.close)
    loop = _Loop(exp, workdir, writer, ckpt, watcher, train_it, start_step, record)
    state = loop.run(state)
  return state, loop


def _compiled(jitted, *args):
  """`jitted` compiled (or loaded from the persistent cache) for `args`, then the compiler's freed heap given
  back to the system (hatnet_jax.training.host_memory): on CPU the step's temporaries would otherwise come on top of it
  (hatnet_tiny: peak RSS 4.6 -> 4.0 GiB). The result takes arguments of exactly these shapes and shardings."""
  compiled = jitted.lower(*args).compile()
  host_memory.release_freed_memory()
  return compiled


class _Loop:
  """The step loop of `train_and_evaluate`, with its periodic actions as methods."""

  def __init__(self, exp, workdir, writer, ckpt, watcher, train_it, start_step, record):
    self.exp, self.config, self.writer, self.ckpt, self.watcher = exp, exp.config, writer, ckpt, watcher
    self.record = record
    self.train_it, self.start_step = train_it, start_step
    self.progress = monitor.Progress(start_step, exp.num_steps, self.config.batch_size)
    self.profile = monitor.create_profile_hook(self.config, workdir)
    self.pending, self.t_interval, self.steps_interval = [], time.time(), 0
    self.last_eval, self.stopped = None, None

  def run(self, state):
    exp = self.exp
    logging.info('Training from step %d to %d (%d per epoch, %d images per step).', self.start_step, exp.num_steps,
                 exp.steps_per_epoch, self.config.batch_size)
    train_step = exp.train_step
    for step in range(self.start_step, exp.num_steps):
      batch = next(self.train_it)
      done = step + 1
      self._maybe_log_images(batch, step, done)
      if step == self.start_step:
        train_step = _compiled(exp.train_step, state, batch)
      state, metrics = train_step(state, batch)
      self.pending.append(metrics)
      self.steps_interval += 1
      if step == self.start_step:  # keep compilation out of the throughput figures
        jax.block_until_ready(metrics)
        logging.info('First step (compilation included) took %.1fs%s.', time.time() - self.t_interval,
                     compile_cache.describe_counts())
        self.progress.first_step_done(done)
        self.t_interval, self.steps_interval = time.time(), 0
      if self.profile is not None:
        self.profile(done)
      if done % self.config.log_every_steps == 0 or done == exp.num_steps:
        self._log_train(state, done)
      state = self._checkpoint_and_eval(state, done)
      if self.stopped is not None:
        break
    return state

  def _maybe_log_images(self, batch, step, done):
    every = self.config.log_images_every_steps
    if every > 0 and jax.process_index() == 0 and (step == self.start_step or done % every == 0):
      d = self.config.data
      images = layout.local_rows(batch['image'], self.config.log_images_count)
      self.writer.write_images(done, {'train_images': pictures.images_for_display(images, d.mean, d.std)})

  def _log_train(self, state, done):
    summary = monitor.mean_metrics(self.pending)
    elapsed = time.time() - self.t_interval
    if self.steps_interval and elapsed > 0:
      summary['steps_per_sec'] = self.steps_interval / elapsed
      summary['images_per_sec'] = summary['steps_per_sec'] * self.config.batch_size
      summary['images_per_sec_per_device'] = summary['images_per_sec'] / self.exp.mesh.size
    summary['epoch'] = done / self.exp.steps_per_epoch
    summary['train_skipped_images'] = self.train_it.num_skipped
    self.writer.write_scalars(done, summary)
    self.record.update(step=done)
    self.progress.log(done)
    self.pending, self.t_interval, self.steps_interval = [], time.time(), 0
    if (error := _nonfinite_error(state, self.ckpt)) is not None:
      raise error

  def _checkpoint_and_eval(self, state, done):
    config, exp = self.config, self.exp
    t0 = time.time()
    evaluating = done % exp.eval_every == 0 or done == exp.num_steps
    stopping = self.watcher.reached(done)
    if stopping or evaluating or done % config.checkpoint_every_steps == 0:
      if (error := _nonfinite_error(state, self.ckpt)) is not None:
        raise error
      self.ckpt.save(done, state)
      self.record.update(step=done, checkpoint_step=done)
    if evaluating:
      self.ckpt.wait_until_finished()  # committed before evaluating: a failing evaluation loses no training
      metrics = evaluate(exp, state)
      self.writer.write_scalars(done, _scalars(metrics))
      task_metrics = _task_metrics(metrics)
      exp.task.write_eval_summaries(self.writer, done, task_metrics, state.variables(), exp.model, exp.mesh)
      self.ckpt.record_eval(done, task_metrics[exp.task.best_metric])
      self.record.update(step=done, eval_metrics=_scalars(metrics), best_metric_name=f'eval_{exp.task.best_metric}')
      self.last_eval = (done, task_metrics)
      logging.info('Evaluation at step %d: %s (%.1fs)', done, exp.task.describe(task_metrics), time.time() - t0)
      # Keep evaluation (and its checkpoint) out of the training throughput and the ETA.
      self.progress.eval_seconds += time.time() - t0
      self.t_interval += time.time() - t0
    if stopping:
      self.stopped = done
    return state

  def report_end(self, state):
    """The last line of a run: what was done, how long it took, the final metrics; or how it was stopped."""
    done = int(jax.device_get(state.step))
    wall = monitor.format_duration(time.time() - self.progress.started)
    if self.stopped is not None and self.watcher.interrupted:
      raise preemption.Interrupted(done, self.ckpt.directory)
    if self.stopped is not None:
      logging.warning('Preempted: saved a checkpoint at step %d in %s; exiting. Run the same command to continue.',
                      done, self.ckpt.directory)
      return
    result = '' if self.last_eval is None else (
        f'; final evaluation (step {self.last_eval[0]}): {self.exp.task.describe(self.last_eval[1])}')
    best = self.ckpt.best
    best_text = '' if not best else f'; best {best["metric"]} {best["value"]:.4f} at step {best["step"]}'
    logging.info('Training finished: %d steps (%d this session) in %s%s%s.', done, done - self.start_step, wall,
                 result, best_text)
