"""JAX's persistent compilation cache for the trainer: which directory, set up before the first compile.

    compile_cache.configure(config.compilation_cache_dir)   # -> the directory in use, or None

main.py calls it before anything compiles, `train.train_and_evaluate` again (for callers other than main.py)
after the settings checks; the first-step log line reports `counts()` (programs loaded / written).

Which directory (the first rule that applies):
  1. jax_enable_compilation_cache is False (JAX_ENABLE_COMPILATION_CACHE=false): no cache.
  2. The environment variable JAX_COMPILATION_CACHE_DIR is set: that directory (empty: no cache). It wins
     over the config, so a test harness or a cluster setup can point every run at one place.
  3. config.compilation_cache_dir ('~' expanded); '' or None: no cache.
A directory that cannot be created or written gives one warning and the run continues without the cache.

Programs that took at least MIN_COMPILE_TIME_SECS to compile are stored (the train and eval steps, not the
trivial jits of eager operations), unless JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS says otherwise; the
minimum entry size stays JAX's. In several processes each one reads the same directory and JAX lets only
process 0 write.

JAX (0.10) opens its cache lazily, at the first compilation that finds a directory set, and keeps it for the
life of the process: a later change of directory is ignored until `reset_cache()`. `configure` therefore
resets the cache whenever it changes the directory, so it also works when something was compiled before it
(or when several runs share one process, as in the tests).
"""
import logging as logging_lib
import os
import threading

import jax
from absl import logging
from jax.experimental.compilation_cache import compilation_cache as jax_cc

ENV_DIR = 'JAX_COMPILATION_CACHE_DIR'
ENV_MIN_COMPILE_TIME = 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'
MIN_COMPILE_TIME_SECS = 1.0  # a train/eval step compiles for seconds; an eager op's jit in milliseconds

_HIT_EVENT = '/jax/compilation_cache/cache_hits'
_WRITE_EVENT = '/jax/compilation_cache/cache_misses'  # JAX records it when it writes an entry
_counts = {_HIT_EVENT: 0, _WRITE_EVENT: 0}
_counts_lock = threading.Lock()
_listening = False
_active_dir: str | None = None  # what the last `configure` chose
_last_inputs = None  # what it decided from: (config dir, JAX_COMPILATION_CACHE_DIR, jax_enable_compilation_cache)


def resolve(config_dir: str | None, environ=None, enabled: bool | None = None) -> tuple[str | None, str]:
  """(directory or None for no cache, why): the rules of the module docstring; touches nothing."""
  environ = os.environ if environ is None else environ
  enabled = jax.config.jax_enable_compilation_cache if enabled is None else enabled
  if not enabled:
    return None, 'jax_enable_compilation_cache is False'
  if ENV_DIR in environ:
    if not environ[ENV_DIR]:
      return None, f'{ENV_DIR} is set and empty'
    return os.path.expanduser(environ[ENV_DIR]), f'from {ENV_DIR}, which wins over config.compilation_cache_dir'
  if not config_dir:
    return None, 'config.compilation_cache_dir is empty'
  return os.path.expanduser(config_dir), 'from config.compilation_cache_dir'


def _writable(path: str) -> str | None:
  """None when `path` is (now) a writable directory, else the reason it is not."""
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f'.write_test_{os.getpid()}')
    with open(probe, 'w'):
      pass
    os.remove(probe)
  except OSError as e:
    return e.strerror or str(e)
  return None


def _set_dir(path: str | None) -> None:
  if jax.config.jax_compilation_cache_dir != path:
    jax.config.update('jax_compilation_cache_dir', path)
    jax_logger = logging_lib.getLogger('jax._src.compilation_cache')  # its 'Resetting cache' INFO line
    level = jax_logger.level
    jax_logger.setLevel(max(level, logging_lib.WARNING))
    try:
      jax_cc.reset_cache()  # JAX would otherwise keep a cache it already opened at the old directory
    finally:
      jax_logger.setLevel(level)


def _count(event: str, **kwargs) -> None:
  del kwargs
  if event in _counts:
    with _counts_lock:
      _counts[event] += 1


def _reset_counts() -> None:
  with _counts_lock:
    _counts.update({event: 0 for event in _counts})


def configure(config_dir: str | None) -> str | None:
  """Points JAX's persistent compilation cache at the directory the rules choose and logs one line saying
  which and why; returns it (None: no cache). Call it before the run compiles its steps. A second call with
  the same inputs only restarts the counts (`counts()`)."""
  global _listening, _active_dir, _last_inputs
  inputs = (config_dir, os.environ.get(ENV_DIR), jax.config.jax_enable_compilation_cache)
  if inputs == _last_inputs and jax.config.jax_compilation_cache_dir == _active_dir:
    _reset_counts()  # decided and logged already (main.py, then the trainer)
    return _active_dir
  _last_inputs, _active_dir = inputs, None
  path, why = resolve(config_dir)
  if path is not None:
    path = os.path.abspath(path)
    problem = _writable(path)
    if problem is not None:
      fix = f'point {ENV_DIR} elsewhere' if ENV_DIR in why else "set config.compilation_cache_dir elsewhere or to ''"
      logging.warning('Compilation cache: %s (%s) cannot be written (%s); continuing without the persistent '
                      'compilation cache (%s).', path, why, problem, fix)
      _set_dir(None)
      return None
  _set_dir(path)
  if path is None:
    logging.info('Compilation cache: off (%s).', why)
    return None
  if ENV_MIN_COMPILE_TIME not in os.environ:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_TIME_SECS)
  _reset_counts()
  if not _listening:
    jax.monitoring.register_event_listener(_count)
    _listening = True
  logging.info('Compilation cache: %s (%s; stores programs that compile in >= %gs).', path, why,
               jax.config.jax_persistent_cache_min_compile_time_secs)
  _active_dir = path
  return path


def counts() -> tuple[int, int] | None:
  """(programs loaded from the cache, programs written to it) since the last `configure`; None when that
  `configure` left the cache off."""
  if _active_dir is None:
    return None
  with _counts_lock:
    return _counts[_HIT_EVENT], _counts[_WRITE_EVENT]


def describe_counts() -> str:
  """' (compilation cache: 2 programs loaded, 0 written)' for a log line; '' when the cache is off."""
  n = counts()
  return '' if n is None else f' (compilation cache: {n[0]} programs loaded, {n[1]} written)'
