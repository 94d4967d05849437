"""Stopping cleanly: SIGTERM (preemption) and Ctrl-C (SIGINT) end the run at an agreed step with a checkpoint.

One process: the handlers set a flag that the loop checks between steps. Several processes
(jax.distributed): JAX's preemption sync service catches a SIGTERM on any of them and picks the same step
for all; Ctrl-C is turned into a SIGTERM of this process so it goes through the same agreement.

Ctrl-C: the first press asks for a checkpoint at the end of the current step and an exit; a second is
ignored (with a line saying so) until the checkpoint is committed; a third forces an immediate exit.
"""
import os
import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils

FORCE_EXIT_STATUS = 130  # 128 + SIGINT, what a shell reports for a process ended by Ctrl-C


class Interrupted(KeyboardInterrupt):
  """Raised by the loop after Ctrl-C, once the checkpoint of the reached step is committed."""

  def __init__(self, step: int, directory: str):
    super().__init__(f'Interrupted (Ctrl-C) at step {step}: the checkpoint of step {step} is in {directory}; '
                     f'run the same command again to continue from it.')
    self.step = step
    self.directory = directory


class StopWatcher:
  """`reached(step)` turns True at the step where every process should save a checkpoint and exit.

  `interrupted` tells Ctrl-C from SIGTERM. Use as a context manager (restores the previous handlers);
  call `reached` at every step, with the same step on every process.
  """

  def __init__(self):
    self._multiprocess = jax.process_count() > 1
    self._flag = threading.Event()
    self.interrupted = False
    self._presses = 0
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      if not self._multiprocess:
        self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_sigterm)
      self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def _on_sigterm(self, signum, frame):
    del signum, frame
    logging.warning('Received SIGTERM: will save a checkpoint after the current step and stop.')
    self._flag.set()

  def _on_sigint(self, signum, frame):
    del signum, frame
    self._presses += 1
    if self._presses == 1:
      self.interrupted = True
      logging.warning('Ctrl-C: will save a checkpoint after the current step and stop (press Ctrl-C twice '
                      'more to exit at once without it).')
      if self._multiprocess:
        os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption service agrees on the step with the others
      else:
        self._flag.set()
    elif self._presses == 2:
      logging.warning('Ctrl-C again: still saving the checkpoint; press Ctrl-C once more to exit at once and '
                      'lose it.')
    else:
      logging.error('Ctrl-C a third time: exiting now, without the checkpoint in progress.')
      os._exit(FORCE_EXIT_STATUS)  # pylint: disable=protected-access

  def reached(self, step: int) -> bool:
    if self._multiprocess:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._flag.is_set()
