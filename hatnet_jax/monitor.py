"""Monitoring with clu: TensorBoard writer (process 0), hparams, image samples, progress/ETA and profiler hooks.

clu's writers import tensorflow, so clu is imported inside the functions here: `hatnet_jax.train` stays
importable on a machine without tensorflow (the train step, e.g. for benchmarks).
"""
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np


def create_writer(workdir: str):
  """clu writer: TensorBoard event files and DIR/metrics.jsonl in `workdir` plus the log on process 0; the
  log only elsewhere."""
  from hatnet_jax import run_record  # pylint: disable=g-import-not-at-top
  return run_record.create_writer(workdir)


def hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config flattened to {'data.image_size': 224, ...} with TensorBoard-friendly values."""
  flat = {}

  def visit(prefix, node):
    for key, value in node.items():
      name = f'{prefix}{key}'
      if isinstance(value, (ml_collections.ConfigDict, Mapping)):
        visit(name + '.', value)
      elif value is None or isinstance(value, (bool, int, float, str)):
        flat[name] = '' if value is None else value
      else:
        flat[name] = str(value)

  visit('', config)
  return flat


def local_rows(array: jax.Array, n: int) -> np.ndarray:
  """The first `n` rows of a batch-sharded global array that live on this process (no communication)."""
  shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
  rows, have = [], 0
  for shard in shards:
    if have >= n:
      break
    data = np.asarray(shard.data)
    rows.append(data[:n - have])
    have += len(rows[-1])
  return np.concatenate(rows)[:n]


def images_for_display(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """Normalised NHWC float images back to uint8 RGB."""
  images = np.asarray(images, np.float32) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
  return (np.clip(images, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def mean_metrics(metrics: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """Averages of per-step scalar metrics (device arrays are fetched here, in one transfer)."""
  metrics = jax.device_get(list(metrics))
  return {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}


def create_hooks(config: ml_collections.ConfigDict, workdir: str, writer, num_train_steps: int):
  """(progress, hooks): clu ReportProgress (steps/s to the writer, progress with ETA in the log every
  log_every_steps) and, on process 0 when profile_start_step >= 0, a profiler trace of profile_num_steps
  steps written to `workdir` (TensorBoard's profile tab)."""
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top
  progress = periodic_actions.ReportProgress(num_train_steps=num_train_steps, writer=writer,
                                             every_steps=config.log_every_steps, every_secs=None)
  hooks = [progress]
  if jax.process_index() == 0 and config.profile_start_step >= 0:
    hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=config.profile_num_steps,
                                          profile_duration_ms=None, first_profile=config.profile_start_step,
                                          every_steps=None, every_secs=None))
  return progress, hooks
