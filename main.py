"""Trains or evaluates HAT-Net: `python main.py --config=configs/hatnet_tiny.py --workdir=DIR`.

Every config field can be overridden (`--config.batch_size=512`; unknown keys are rejected);
`--config.mode=eval` evaluates the latest checkpoint in DIR (or `--config.init_from=CONVERTED_DIR`) once.
Several hosts: pass --multihost (jax.distributed auto-detects TPU pods, SLURM, ...) or the coordinator flags;
with JAX_COORDINATOR_ADDRESS in the environment it is on by default.

Exit status: 0 done (or preempted by SIGTERM, with a checkpoint), 1 an error (its message is the last
line), 130 stopped by Ctrl-C (with a checkpoint of the step reached).
"""
import logging as logging_lib
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and TensorBoard logs.')
_MULTIHOST = flags.DEFINE_bool('multihost', None, 'Call jax.distributed.initialize() (default: when a '
                               'coordinator address is given by flag or JAX_COORDINATOR_ADDRESS).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-host).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-host).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Index of this process (multi-host).')
_TRACEBACK = flags.DEFINE_bool('traceback', False, 'On an error, print the whole traceback, not only the message.')
flags.mark_flags_as_required(['config', 'workdir'])


def _exit(status: int, message: str = ''):
  """Ends the process now: the run has closed its threads and writers; skipping the interpreter's teardown
  keeps TensorFlow's and XLA's background threads from aborting the process on their way out."""
  if message:
    print(message, file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)  # pylint: disable=protected-access


def _parse_flags(argv):
  """absl's flag parsing, with a one-paragraph error for a misspelt --config.FIELD."""
  try:
    return flags.FLAGS(argv)
  except (KeyError, AttributeError) as e:  # ml_collections: no such field (its message names a close one)
    override = next((a for a in argv if a.startswith('--config.')), '--config.?').split('=')[0]
    parent, _, field = override[len('--config.'):].rpartition('.')
    close = re.search(r'Did you mean \W*"([^"\\]+)\W*"', str(e))
    hint = f'\nDid you mean --config.{parent + "." if parent else ""}{close.group(1)}?' if close else ''
    _exit(2, f'Error: {override}: the config has no field {field!r}{" in " + parent if parent else ""}; check '
             f'the spelling against the config file (unknown fields are rejected).{hint}')
  except flags.IllegalFlagValueError as e:  # e.g. --config.model.unroll=True: the field holds an int
    _exit(2, f'Error: {e}. A --config.FIELD value is parsed as the type of the field\'s value in the config '
             f'file; give one of that type.')


class _DropLibraryInfo(logging_lib.Filter):
  """Keeps orbax's per-save INFO chatter out of the log (its warnings and errors still show)."""

  def filter(self, record):
    return record.levelno >= logging_lib.WARNING or f'{os.sep}orbax{os.sep}' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_DropLibraryInfo())
  if _CONFIG.value.cpu_huge_pages:  # first: it may start the program again (see hatnet_jax.training.host_memory)
    from hatnet_jax.training import host_memory  # pylint: disable=g-import-not-at-top
    applied, why = host_memory.reexec_with_huge_pages()
    logging.info('Host memory (CPU backend): %s.', why if applied else f'glibc default ({why})')
  import jax  # pylint: disable=g-import-not-at-top
  multihost = _MULTIHOST.value
  if multihost is None:
    multihost = bool(_COORDINATOR.value or os.environ.get('JAX_COORDINATOR_ADDRESS'))
  if multihost:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  # Imported only now: jax.distributed.initialize() must come before anything initialises a JAX backend.
  from hatnet_jax.training import compile_cache, preemption, train  # pylint: disable=g-import-not-at-top
  logging.info('JAX process %d/%d, %d local / %d global devices (%s)', jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.default_backend())
  # Before anything compiles (the trainer's own call then finds it done); a directory it cannot write gives
  # a warning and the run goes on without the cache.
  compile_cache.configure(_CONFIG.value.compilation_cache_dir)
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except preemption.Interrupted as e:
    _exit(preemption.FORCE_EXIT_STATUS, str(e))
  except (ValueError, OSError, FloatingPointError, RuntimeError) as e:  # settings, files, data, divergence
    if _TRACEBACK.value:
      logging.exception('The run failed:')
    _exit(1, f'Error: {e}' + ('' if _TRACEBACK.value else '\n(--traceback shows where it was raised)'))
  # Done: the run has closed its writers and checkpoints. Skipping the interpreter's teardown also skips
  # 35-80 s of tf.data iterator destructors waiting on their thread pools (seen after the digits demo).
  _exit(0)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
