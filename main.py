"""Trains or evaluates HAT-Net: `python main.py --config=configs/hatnet_tiny.py --workdir=DIR`.

Every config field can be overridden (`--config.batch_size=512`; unknown keys are rejected);
`--config.mode=eval` evaluates the latest checkpoint in DIR (or `--config.init_from=CONVERTED_DIR`) once.
Several hosts: pass --multihost (jax.distributed auto-detects TPU pods, SLURM, ...) or the coordinator flags;
with JAX_COORDINATOR_ADDRESS in the environment it is on by default.
"""
import logging as logging_lib
import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and TensorBoard logs.')
_MULTIHOST = flags.DEFINE_bool('multihost', None, 'Call jax.distributed.initialize() (default: when a '
                               'coordinator address is given by flag or JAX_COORDINATOR_ADDRESS).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-host).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-host).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Index of this process (multi-host).')
flags.mark_flags_as_required(['config', 'workdir'])


def _hide_accelerators_from_tensorflow():
  """tf.data runs on the CPU; keep TensorFlow off the GPUs/TPUs that JAX uses (if it is installed)."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  tf.config.set_visible_devices([], 'GPU')
  tf.config.set_visible_devices([], 'TPU')


class _DropLibraryInfo(logging_lib.Filter):
  """Keeps orbax's per-save INFO chatter out of the log (its warnings and errors still show)."""

  def filter(self, record):
    return record.levelno >= logging_lib.WARNING or f'{os.sep}orbax{os.sep}' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_DropLibraryInfo())
  _hide_accelerators_from_tensorflow()
  multihost = _MULTIHOST.value
  if multihost is None:
    multihost = bool(_COORDINATOR.value or os.environ.get('JAX_COORDINATOR_ADDRESS'))
  if multihost:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  # Imported only now: jax.distributed.initialize() must come before anything initialises a JAX backend.
  from hatnet_jax import train  # pylint: disable=g-import-not-at-top
  logging.info('JAX process %d/%d, %d local / %d global devices (%s)', jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.default_backend())
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
