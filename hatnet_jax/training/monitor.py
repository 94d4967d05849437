"""Monitoring with clu: TensorBoard writer (process 0), hparams, image samples, progress/ETA and profiler hooks.

clu's writers import tensorflow, so clu is imported inside the functions here: `hatnet_jax.training.train` stays
importable on a machine without tensorflow (the train step, e.g. for benchmarks).
"""
import time
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util


def create_writer(workdir: str):
  """clu writer: TensorBoard event files and DIR/metrics.jsonl in `workdir` plus the log on process 0; the
  log only elsewhere."""
  from hatnet_jax.training import run_record  # pylint: disable=g-import-not-at-top
  return run_record.create_writer(workdir)


def hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config flattened to {'data.image_size': 224, ...} with TensorBoard-friendly values."""
  flat = traverse_util.flatten_dict(config.to_dict(), sep='.')
  return {k: '' if v is None else v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flat.items()}


def mean_metrics(metrics: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """Averages of per-step scalar metrics (device arrays are fetched here, in one transfer)."""
  metrics = jax.device_get(list(metrics))
  return {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}


def format_duration(seconds: float) -> str:
  """'42s' below a minute, else '3m05s' / '2h07m'."""
  seconds = max(0, int(round(seconds)))
  if seconds < 60:
    return f'{seconds}s'
  if seconds < 3600:
    return f'{seconds // 60}m{seconds % 60:02d}s'
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'


class Progress:
  """The progress line of the log: step/total, %, images/s, ETA; and the wall time of the run's parts."""

  def __init__(self, start_step: int, num_steps: int, batch_size: int):
    self.start_step, self.num_steps, self.batch_size = start_step, num_steps, batch_size
    self.started = time.time()
    self._t0, self._step0 = None, start_step  # after the first (compiling) step
    self.eval_seconds = 0.0

  def first_step_done(self, step: int):
    self._t0, self._step0 = time.time(), step

  def line(self, step: int) -> str:
    text = f'Step {step}/{self.num_steps} ({100 * step / max(self.num_steps, 1):.1f}%)'
    if self._t0 is not None and step > self._step0:
      elapsed = time.time() - self._t0 - self.eval_seconds
      rate = (step - self._step0) / max(elapsed, 1e-9)
      text += (f', {rate * self.batch_size:.1f} images/s, ETA {format_duration((self.num_steps - step) / rate)}'
               ' (training only)')
    return text

  def log(self, step: int):
    logging.info('%s', self.line(step))


def create_profile_hook(config: ml_collections.ConfigDict, workdir: str):
  """On process 0 when profile_start_step >= 0: clu's profiler hook writing a trace of profile_num_steps
  steps to `workdir` (TensorBoard's profile tab); else None."""
  if jax.process_index() != 0 or config.profile_start_step < 0:
    return None
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top
  return periodic_actions.Profile(logdir=workdir, num_profile_steps=config.profile_num_steps,
                                  profile_duration_ms=None, first_profile=config.profile_start_step,
                                  every_steps=None, every_secs=None)
