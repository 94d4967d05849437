"""Test setup: 8 fake CPU devices (set before jax is imported anywhere), a temporary build cache for the native
kernel, and the repo root on sys.path."""
import atexit
import os
import shutil
import sys
import tempfile

_DEVICES_FLAG = '--xla_force_host_platform_device_count=8'
if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _DEVICES_FLAG).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
if 'HATNET_JAX_NATIVE_CACHE' not in os.environ:  # the native kernel's build, shared with subprocesses, not in ~
  os.environ['HATNET_JAX_NATIVE_CACHE'] = tempfile.mkdtemp(prefix='hatnet_native_')
  atexit.register(shutil.rmtree, os.environ['HATNET_JAX_NATIVE_CACHE'], ignore_errors=True)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope='session')
def digits_data_dir(tmp_path_factory):
  """A private TFDS data dir with the digits demo dataset prepared once per session (no writes to ~)."""
  from configs import digits  # pylint: disable=g-import-not-at-top
  from hatnet_jax.data import classification as data  # pylint: disable=g-import-not-at-top
  config = digits.get_config()
  config.data.data_dir = str(tmp_path_factory.mktemp('tfds'))
  data.dataset_info(config.data)  # prepares it, so later (possibly concurrent) runs only read
  return config.data.data_dir
