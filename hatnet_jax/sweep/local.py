"""The local launcher: the points one after another, each in its own `python main.py` process (a crash frees
everything and cannot stop the others), its output appended to DIR/<point>/sweep.log.

SIGINT/SIGTERM: the running point gets SIGTERM (the trainer saves a checkpoint and stops), the summary is
written, the sweep exits; relaunching the same command continues where it stopped.
"""
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence

from hatnet_jax.sweep import state
from hatnet_jax.sweep import summary
from hatnet_jax.sweep.points import Point


def _set_parent_death_signal():  # in the child, before exec: SIGTERM when the sweep dies (Linux)
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
  except Exception:  # pylint: disable=broad-except
    pass


class Stop:
  """SIGINT/SIGTERM while a point runs: the point gets SIGTERM (checkpoint and exit), the sweep stops after
  it; a second signal kills the point."""

  def __init__(self):
    self.signum, self.proc, self._previous = None, None, {}

  def __enter__(self):
    for s in (signal.SIGINT, signal.SIGTERM):
      self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)

  def _handle(self, signum, frame):
    del frame
    first = self.signum is None
    self.signum = signum
    if self.proc is not None and self.proc.poll() is None:
      self.proc.send_signal(signal.SIGTERM if first else signal.SIGKILL)
    print(f'sweep: got signal {signum}: ' + ('stopping after the running point checkpoints' if first else
                                               'killing the running point'), file=sys.stderr, flush=True)


def run_point(point: Point, stop: Stop, env: Mapping[str, str] | None = None) -> dict[str, Any]:
  """Runs (or resumes) one point in a subprocess; returns its updated sweep_status record."""
  os.makedirs(point.workdir, exist_ok=True)
  log_path = os.path.join(point.workdir, state.LOG_FILE)
  with open(log_path, 'ab') as log:
    start_offset = log.tell()
    log.write(f'==== sweep: {time.strftime("%Y-%m-%d %H:%M:%S")}: {shlex.join(point.argv)}\n'.encode())
    log.flush()
    start = time.time()
    proc = subprocess.Popen(point.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            env=None if env is None else dict(env), start_new_session=True,
                            preexec_fn=_set_parent_death_signal)
    stop.proc = proc
    if stop.signum is not None:  # a signal came while it was starting
      proc.send_signal(signal.SIGTERM)
    try:
      returncode = proc.wait()
    finally:
      stop.proc = None
  wall = time.time() - start
  tail = state.log_tail(log_path, start_offset)
  status, error = state.outcome(point, returncode, start, tail, stopped=stop.signum is not None)
  attempt = dict(launcher='local', start=time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(start)),
                 wall_time_s=wall, returncode=returncode)
  if status == 'failed':
    attempt['log_tail'] = tail
  return state.record_attempt(point, status=status, error=error, **attempt)


def run_sweep(points: Sequence[Point], workdir: str, *, env: Mapping[str, str] | None = None,
              sweep_info: Mapping[str, Any] | None = None, log=print) -> tuple[list[dict[str, Any]], int]:
  """Runs the points that are not finished, one after another; writes DIR/summary.{csv,md}.

  Returns (the summary rows, exit status: 0 if every point finished, 1 if one failed or did not finish,
  128 + signal if the sweep was stopped by SIGINT/SIGTERM).
  """
  summary.write_sweep_file(points, workdir, sweep_info)
  statuses = {}
  with Stop() as stop:
    for i, point in enumerate(points, 1):
      prefix = f'[{i}/{len(points)}] {point.name}'
      if stop.signum is not None:
        statuses[point.name] = 'not-run'
        continue
      rec = state.record(point)
      if state.is_finished(point):
        statuses[point.name] = 'finished-earlier'
        log(f'{prefix}: finished earlier, skipped')
        continue
      resume = (rec or {}).get('checkpoint_step')
      log(f'{prefix}: ' + (f'resuming from step {resume}' if resume else 'running') +
          f' (log: {os.path.join(point.workdir, state.LOG_FILE)})')
      result = run_point(point, stop, env)
      statuses[point.name] = result['status']
      wall = result['attempts'][-1]['wall_time_s']
      log(f'{prefix}: {result["status"]} after {wall:.0f}s' + (f': {result["error"]}' if result['error'] else ''))
  rows = summary.write_summary(points, workdir, statuses, sweep_info=sweep_info)
  if stop.signum is not None:
    return rows, 128 + stop.signum
  return rows, summary.exit_status(rows)
