"""Run records: what a training run did, in two small files of its workdir that anything can read back.

* DIR/metrics.jsonl: every scalar the run wrote through its metric writer, appended, one JSON object per
  write: {"step": 100, "time": 1712345678.9, "train_loss": 0.71, ...}. A resumed run appends to it (a
  step written twice: the later line wins).
* DIR/run.json: the state of the run, rewritten atomically (temporary file + os.replace) at its start, at
  evals and checkpoints and at its end: {"status": "running" | "finished" | "preempted" | "interrupted" |
  "failed", "task", "num_steps", "steps_per_epoch", "step" (last completed step), "checkpoint_step" (latest
  saved checkpoint or null), "best": {"metric", "value", "step"} or null, "final_metrics" (the last eval),
  "error" (one line or null), "hparams" (the flat config), "started", "updated" (ISO times), "wall_time_s"
  (summed over all sessions of a resumed run)}.

A run is finished iff run.json says status 'finished' and step == num_steps. Only process 0 writes.
The sweep runner (hatnet_jax.sweep) reads these files, never TensorBoard event files or checkpoint directories.
"""
import datetime
import json
import math
import numbers
import os
import time
from typing import Any, Mapping

import numpy as np

RUN_FILE = 'run.json'
METRICS_FILE = 'metrics.jsonl'
STATUSES = ('running', 'finished', 'preempted', 'interrupted', 'failed')


def _process_index() -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index()


def _now_iso() -> str:
  return datetime.datetime.now().astimezone().isoformat(timespec='seconds')


def _scalar(value: Any) -> float | None:
  """A Python float for a scalar-like value (number, 0-d or 1-element array), else None."""
  if isinstance(value, bool):
    return float(value)
  if isinstance(value, numbers.Number):
    return float(value)
  try:
    array = np.asarray(value)
  except Exception:  # pylint: disable=broad-except
    return None
  if array.size == 1 and array.dtype.kind in 'fiub':
    return float(array.reshape(()))
  return None


def _json_number(x: float) -> float | str:
  return x if math.isfinite(x) else str(x)  # JSON has no NaN/inf: 'nan', 'inf', '-inf'


def _to_float(x: Any) -> float:
  return float(x)  # also parses 'nan' / 'inf' written by _json_number


# ---------------------------------------------------------------------------------------------------------
# metrics.jsonl


class _JsonlWriter:
  """(`JsonlWriter` is this class with clu's MetricWriter as a base, made on first use: importing clu's
  writers imports tensorflow, and `hatnet_jax.training.train` must import without it.)

  A clu MetricWriter that appends the scalars written to DIR/metrics.jsonl (one JSON object per write).

  Scalar-like values of write_summaries count as scalars; images, videos, audios, texts, histograms and
  hparams are ignored (the run's hparams go to run.json). Each write reaches the OS at once (a reader sees
  it); flush() and close() also fsync.
  """

  def __init__(self, workdir: str, filename: str = METRICS_FILE):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, filename)
    self._file = open(self.path, 'a', encoding='utf-8')  # pylint: disable=consider-using-with

  def _append(self, step: int, values: Mapping[str, Any]):
    row = {}
    for name, value in values.items():
      x = _scalar(value)
      if x is not None:
        row[name] = _json_number(x)
    if not row or self._file is None:
      return
    line = json.dumps({'step': int(step), 'time': time.time(), **row})
    self._file.write(line + '\n')
    self._file.flush()

  def write_scalars(self, step, scalars):
    self._append(step, scalars)

  def write_summaries(self, step, values, metadata=None):
    del metadata
    self._append(step, values)

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    if self._file is not None:
      self._file.flush()
      os.fsync(self._file.fileno())

  def close(self):
    if self._file is not None:
      self.flush()
      self._file.close()
      self._file = None


_CLASSES = {}


def __getattr__(name: str):
  if name == 'JsonlWriter':
    if name not in _CLASSES:
      from clu.metric_writers import interface  # pylint: disable=g-import-not-at-top
      _CLASSES[name] = type('JsonlWriter', (_JsonlWriter, interface.MetricWriter),
                            {'__doc__': _JsonlWriter.__doc__.split('\n\n', 1)[1], '__module__': __name__})
    return _CLASSES[name]
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def create_writer(workdir: str):
  """clu's default writer (TensorBoard events in `workdir` + the log on process 0, the log elsewhere)
  joined with a JsonlWriter (DIR/metrics.jsonl, process 0 only)."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  main = _process_index() == 0
  default = metric_writers.create_default_writer(workdir, just_logging=not main)
  return metric_writers.MultiWriter([default, __getattr__('JsonlWriter')(workdir)] if main else [default])


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The rows of DIR/metrics.jsonl in order ([] if none); a line cut short (a killed run) is skipped."""
  rows = []
  try:
    with open(os.path.join(workdir, METRICS_FILE), encoding='utf-8') as f:
      for line in f:
        try:
          row = json.loads(line)
        except ValueError:
          continue
        if isinstance(row, dict) and 'step' in row:
          rows.append({k: (v if k in ('step', 'time') else _to_float(v)) for k, v in row.items()})
  except OSError:
    pass
  return rows


def scalar_history(workdir: str) -> dict[str, dict[int, float]]:
  """{name: {step: value}} from DIR/metrics.jsonl (a later write of a step wins)."""
  out = {}
  for row in read_metrics(workdir):
    for k, v in row.items():
      if k not in ('step', 'time'):
        out.setdefault(k, {})[int(row['step'])] = v
  return out


# ---------------------------------------------------------------------------------------------------------
# run.json


def read(workdir: str) -> dict[str, Any] | None:
  """DIR/run.json as a dict; None if it is missing, unreadable or not a JSON object."""
  try:
    with open(os.path.join(workdir, RUN_FILE), encoding='utf-8') as f:
      data = json.load(f)
  except (OSError, ValueError):
    return None
  return data if isinstance(data, dict) else None


def is_finished(record: Mapping[str, Any] | None) -> bool:
  """Whether a run.json (as `read` returns it) describes a finished run."""
  return bool(record) and record.get('status') == 'finished' and record.get('num_steps') is not None and (
      record.get('step') == record.get('num_steps'))


def write_atomic(path: str, data: Any):
  """Writes JSON to `path` via a temporary file in the same directory and os.replace (readers see the old
  or the new file, never a partial one)."""
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(data, f, indent=1, default=str)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def status_of(exc: BaseException) -> tuple[str, str]:
  """(status, one-line error) for an exception that ended a run: 'interrupted' for KeyboardInterrupt and
  SystemExit, else 'failed'."""
  lines = str(exc).strip().splitlines()
  error = type(exc).__name__ + (f': {lines[0].strip()}' if lines else '')
  return ('interrupted' if isinstance(exc, (KeyboardInterrupt, SystemExit)) else 'failed'), error


class RunRecord:
  """Keeps DIR/run.json up to date (process 0 only; elsewhere, or with active=False, every call is a no-op).

  A record found in DIR (a resumed run) is continued: its best, final metrics and wall time carry over
  (wall_time_s = what it said + this session's time).
  """

  def __init__(self, workdir: str, *, active: bool = True):
    self.workdir = workdir
    self.path = os.path.join(workdir, RUN_FILE)
    self.active = active and _process_index() == 0
    self._session_start = time.time()
    self.data = dict(read(workdir) or {}) if self.active else {}
    self._wall_before = float(self.data.get('wall_time_s') or 0.0)

  def _write(self):
    if not self.active:
      return
    self.data['updated'] = _now_iso()
    self.data['wall_time_s'] = self._wall_before + (time.time() - self._session_start)
    os.makedirs(self.workdir, exist_ok=True)
    write_atomic(self.path, self.data)

  def start(self, *, num_steps: int, steps_per_epoch: int, task: str, hparams: Mapping[str, Any], step: int = 0):
    """Status 'running' from `step` (a resumed run: its latest checkpoint)."""
    if not self.active:
      return
    d = self.data
    best = d.get('best')
    if best and best.get('step', 0) > step:  # evals after the checkpoint resumed from will be redone:
      best = self._best_until(best['metric'], best.get('higher_is_better', True), step)  # from metrics.jsonl
    d.update(status='running', task=task, num_steps=int(num_steps), steps_per_epoch=int(steps_per_epoch),
             step=int(step), error=None, hparams=dict(hparams))
    d.setdefault('checkpoint_step', int(step) if step else None)
    d['best'] = best
    d.setdefault('final_metrics', {})
    d.setdefault('started', _now_iso())
    self._write()

  def _best_until(self, metric: str, higher_is_better: bool, step: int) -> dict[str, Any] | None:
    values = {s: v for s, v in scalar_history(self.workdir).get(metric, {}).items()
              if s <= step and not math.isnan(v)}
    if not values:
      return None
    pick = max if higher_is_better else min
    best_step = pick(sorted(values), key=lambda s: values[s])
    return dict(metric=metric, value=values[best_step], step=best_step, higher_is_better=higher_is_better)

  def update(self, *, step: int | None = None, checkpoint_step: int | None = None,
             eval_metrics: Mapping[str, Any] | None = None, best_metric_name: str | None = None,
             higher_is_better: bool = True):
    """Records progress: the last completed step, a checkpoint saved, an eval (its metrics become
    final_metrics; `best_metric_name` among them is tracked as best)."""
    if not self.active:
      return
    d = self.data
    if step is not None:
      d['step'] = int(step)
    if checkpoint_step is not None:
      d['checkpoint_step'] = int(checkpoint_step)
    if eval_metrics is not None:
      metrics = {k: _json_number(x) for k, v in eval_metrics.items() if (x := _scalar(v)) is not None}
      d['final_metrics'] = metrics
      if best_metric_name is not None and best_metric_name in metrics:
        value = _to_float(metrics[best_metric_name])
        best = d.get('best')
        better = (best is None or best.get('metric') != best_metric_name or math.isnan(_to_float(best['value']))
                  or (value > _to_float(best['value']) if higher_is_better else value < _to_float(best['value'])))
        if better and not math.isnan(value):
          d['best'] = dict(metric=best_metric_name, value=value, step=int(d.get('step') or 0),
                           higher_is_better=higher_is_better)
    self._write()

  def finish(self, status: str, error: str | None = None, *, step: int | None = None):
    """The run ended with `status` (see STATUSES); `error` is cut to its first line."""
    if status not in STATUSES:
      raise ValueError(f'status must be one of {STATUSES}; got {status!r}')
    if not self.active:
      return
    if step is not None:
      self.data['step'] = int(step)
    lines = (error or '').strip().splitlines()
    self.data.update(status=status, error=lines[0] if lines else None)
    self._write()

  def fail(self, exc: BaseException, *, step: int | None = None):
    """finish() with the status and error line of the exception that ended the run."""
    status, error = status_of(exc)
    self.finish(status, error, step=step)
