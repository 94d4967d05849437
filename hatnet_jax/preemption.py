"""Preemption: notice a SIGTERM and agree (across processes) on the step at which to checkpoint and stop."""
import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils


class PreemptionWatcher:
  """`reached(step)` turns True at the step where every process should save a checkpoint and exit.

  One process: a SIGTERM handler sets a flag, checked between steps. Several processes (jax.distributed):
  JAX's preemption sync service catches the SIGTERM on any of them and picks the same step for all; call
  `reached` at every step, with the same step on every process.
  """

  def __init__(self):
    self._multiprocess = jax.process_count() > 1
    self._flag = threading.Event()
    self._previous = None
    if not self._multiprocess and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_signal)

  def _on_signal(self, signum, frame):
    del frame
    logging.warning('Received signal %d: will save a checkpoint after the current step and stop.', signum)
    self._flag.set()

  def reached(self, step: int) -> bool:
    if self._multiprocess:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._flag.is_set()

  def close(self):
    """Restores the SIGTERM handler that was in place before."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
