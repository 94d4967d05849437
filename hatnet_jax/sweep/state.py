"""What is known about a point: the trainer's run record (DIR/<point>/run.json, metrics.jsonl) and the
sweep's own bookkeeping (DIR/<point>/sweep_status.json: command, attempts, exit status, error).

Nothing here reads TensorBoard event files or checkpoint directories.
"""
import json
import os
import re
from typing import Any, Mapping

from hatnet_jax.training import run_record
from hatnet_jax.sweep.points import Point

LOG_FILE = 'sweep.log'  # in DIR/<point>: the output of every attempt of the point, appended
STATUS_FILE = 'sweep_status.json'  # in DIR/<point>: overrides, command, attempts, status, error
SWEEP_FILE = 'sweep.json'  # in DIR: base config, shared overrides, the points
ERROR_TAIL_LINES = 30


def record(point: Point) -> dict[str, Any] | None:
  """The point's run.json (None if there is none yet)."""
  return run_record.read(point.workdir)


def is_finished(point: Point) -> bool:
  """run.json says status 'finished' and step == num_steps."""
  return run_record.is_finished(record(point))


def read_status(point_dir: str) -> dict[str, Any]:
  try:
    with open(os.path.join(point_dir, STATUS_FILE)) as f:
      data = json.load(f)
    return data if isinstance(data, dict) else {}
  except (OSError, ValueError):
    return {}


def write_json(path: str, data: Any):
  run_record.write_atomic(path, data)


def write_status(point_dir: str, data: Mapping[str, Any]):
  os.makedirs(point_dir, exist_ok=True)
  write_json(os.path.join(point_dir, STATUS_FILE), data)


def error_of(log_tail: str) -> str:
  """The error a failed run printed: its last exception line (+ the message lines under it), else the
  last lines of its output."""
  lines = [l.rstrip() for l in log_tail.splitlines() if l.strip()]
  for i in range(len(lines) - 1, -1, -1):
    if re.match(r'^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b(:|$)', lines[i]):
      return ' | '.join(lines[i:i + 6])
  return ' | '.join(lines[-5:])


def log_tail(path: str, offset: int = 0) -> str:
  """The last ERROR_TAIL_LINES lines of a log written from `offset` on."""
  try:
    with open(path, 'rb') as log:
      log.seek(max(offset, os.path.getsize(path) - 2**16))
      return b''.join(log.readlines()[-ERROR_TAIL_LINES:]).decode('utf-8', 'replace')
  except OSError:
    return ''


def outcome(point: Point, returncode: int, start_time: float, tail: str, stopped: bool = False
            ) -> tuple[str, str]:
  """(status, error) of an attempt that ended with `returncode`, from the run record it left: 'finished';
  'incomplete' (exit 0 before the last step: SIGTERM from the sweep or a preemption) or 'failed' (the
  record's error line when the trainer wrote one during this attempt, else the log's)."""
  rec = record(point)
  if returncode == 0 and run_record.is_finished(rec):
    return 'finished', ''
  if returncode == 0:
    why = 'the sweep was stopped' if stopped else 'preempted'
    step = (rec or {}).get('checkpoint_step') or 0
    return 'incomplete', f'{why} at step {step}; relaunch the sweep to resume'
  why = f'killed by signal {-returncode}' if returncode < 0 else f'exit status {returncode}'
  fresh = rec is not None and os.path.getmtime(os.path.join(point.workdir, run_record.RUN_FILE)) >= start_time - 1
  if fresh and rec.get('status') == 'failed' and rec.get('error'):
    return 'failed', f'{why}: {rec["error"]}'
  return 'failed', f'{why}: {error_of(tail)}'


def record_attempt(point: Point, *, status: str, error: str, **attempt) -> dict[str, Any]:
  """Appends an attempt to DIR/<point>/sweep_status.json and sets the point's status and error."""
  data = read_status(point.workdir)
  data.update(name=point.name, overrides=point.overrides, settings=point.settings, command=point.command)
  data.setdefault('attempts', []).append(dict(attempt))
  data.update(status=status, error=error)
  write_status(point.workdir, data)
  return data
