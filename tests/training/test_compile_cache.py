"""The persistent compilation cache (hatnet_jax.training.compile_cache): which directory wins (JAX_COMPILATION_CACHE_DIR,
then config.compilation_cache_dir, '' disables), an unwritable directory, a change of directory after JAX
opened its cache, and end to end: a tiny digits run fills the configured directory and a fresh run (new
workdir) loads its steps from it and writes nothing."""
import glob
import logging
import os
import subprocess

import jax
import jax.numpy as jnp
import pytest

from hatnet_jax.training import compile_cache
from tests import test_configs
from tests.training import test_train_e2e as e2e

DEFAULT_DIR = '~/.cache/hatnet_jax/xla'


@pytest.fixture
def jax_cache_settings(monkeypatch, caplog):
  """Restores JAX's cache settings and the module's state afterwards; starts without the env variables."""
  monkeypatch.delenv(compile_cache.ENV_DIR, raising=False)
  monkeypatch.delenv(compile_cache.ENV_MIN_COMPILE_TIME, raising=False)
  caplog.set_level(logging.INFO)
  saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs,
           compile_cache._active_dir, compile_cache._last_inputs)
  yield
  compile_cache._set_dir(saved[0])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', saved[1])
  compile_cache._active_dir, compile_cache._last_inputs = saved[2:]


def _lines(caplog):
  return [r.getMessage() for r in caplog.records if r.getMessage().startswith('Compilation cache:')]


def test_every_config_has_the_field_with_the_per_user_default():
  for path in test_configs.CONFIGS:
    assert test_configs.load_config(path).compilation_cache_dir == DEFAULT_DIR, path


def test_resolve_precedence():
  home = os.path.expanduser('~')
  assert compile_cache.resolve(DEFAULT_DIR, {}, True) == (
      os.path.join(home, '.cache/hatnet_jax/xla'), 'from config.compilation_cache_dir')
  path, why = compile_cache.resolve(DEFAULT_DIR, {'JAX_COMPILATION_CACHE_DIR': '/tmp/from_env'}, True)
  assert path == '/tmp/from_env' and why.startswith('from JAX_COMPILATION_CACHE_DIR')
  assert compile_cache.resolve('', {'JAX_COMPILATION_CACHE_DIR': '/tmp/from_env'}, True)[0] == '/tmp/from_env'
  assert compile_cache.resolve(DEFAULT_DIR, {'JAX_COMPILATION_CACHE_DIR': ''}, True) == (
      None, 'JAX_COMPILATION_CACHE_DIR is set and empty')
  for off in ('', None):
    assert compile_cache.resolve(off, {}, True) == (None, 'config.compilation_cache_dir is empty')
  assert compile_cache.resolve(DEFAULT_DIR, {'JAX_COMPILATION_CACHE_DIR': '/tmp/x'}, False)[0] is None


def test_config_dir_env_var_and_disabling_set_jax_config(tmp_path, monkeypatch, caplog, jax_cache_settings):
  config_dir, env_dir = str(tmp_path / 'from_config'), str(tmp_path / 'from_env')
  assert compile_cache.configure(config_dir) == config_dir
  assert jax.config.jax_compilation_cache_dir == config_dir and os.path.isdir(config_dir)
  assert jax.config.jax_persistent_cache_min_compile_time_secs == compile_cache.MIN_COMPILE_TIME_SECS
  assert compile_cache.counts() == (0, 0)
  assert _lines(caplog) == [f'Compilation cache: {config_dir} (from config.compilation_cache_dir; stores programs '
                            f'that compile in >= 1s).']

  assert compile_cache.configure(config_dir) == config_dir  # the trainer after main.py: nothing new to say
  assert len(_lines(caplog)) == 1

  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', env_dir)
  monkeypatch.setenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)  # what JAX read from it
  assert compile_cache.configure(config_dir) == env_dir
  assert jax.config.jax_compilation_cache_dir == env_dir
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0  # the variable's threshold stays
  assert 'from JAX_COMPILATION_CACHE_DIR, which wins over config.compilation_cache_dir' in _lines(caplog)[-1]

  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR')
  for off in ('', None):
    assert compile_cache.configure(off) is None
    assert jax.config.jax_compilation_cache_dir is None
    assert compile_cache.counts() is None and compile_cache.describe_counts() == ''
  assert _lines(caplog)[-1] == 'Compilation cache: off (config.compilation_cache_dir is empty).'


@pytest.mark.parametrize('kind', ['not_creatable', 'a_file'])
def test_unwritable_dir_warns_once_and_runs_without_cache(tmp_path, caplog, jax_cache_settings, kind):
  path = '/proc/no_such_dir/cache' if kind == 'not_creatable' else str(tmp_path / 'a_file')
  if kind == 'a_file':
    open(path, 'w').close()
  assert compile_cache.configure(path) is None
  assert jax.config.jax_compilation_cache_dir is None
  [warning] = [r for r in caplog.records if r.levelno >= logging.WARNING]
  assert warning.getMessage().startswith(f'Compilation cache: {path} (from config.compilation_cache_dir) cannot '
                                         f'be written (')
  assert 'continuing without the persistent compilation cache' in warning.getMessage()
  assert warning.exc_info is None
  assert compile_cache.configure(path) is None  # same inputs: no second warning
  assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1


def _entries(path):
  return sorted(os.path.basename(p) for p in glob.glob(os.path.join(path, '*-cache')))


def test_a_new_directory_takes_effect_after_jax_opened_the_old_one(tmp_path, monkeypatch, jax_cache_settings):
  monkeypatch.setenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
  x = jnp.arange(7.0)
  compile_cache.configure(a)
  jax.jit(lambda v: jnp.sin(v) * 3.0 + 1.0)(x).block_until_ready()  # JAX opens its cache at `a`
  assert any(e.startswith('jit__lambda') for e in _entries(a))
  assert compile_cache.counts() == (0, 1)
  compile_cache.configure(b)
  jax.jit(lambda v: jnp.cos(v) * 5.0 - 1.0)(x).block_until_ready()
  assert any(e.startswith('jit__lambda') for e in _entries(b)) and len(_entries(a)) == 1
  compile_cache.configure(a)
  jax.jit(lambda v: jnp.sin(v) * 3.0 + 1.0)(x).block_until_ready()  # a new jit object: read back from `a`
  assert compile_cache.counts() == (1, 0) and len(_entries(a)) == 1


def _run(data_dir, workdir, cache_dir):
  """A tiny digits run through main.py (1 device) with config.compilation_cache_dir=cache_dir; its log."""
  env = e2e._env({'cache': cache_dir}, 1)  # every program is stored (threshold 0), whatever its compile time
  del env['JAX_COMPILATION_CACHE_DIR']  # the config field decides
  cmd = e2e._cmd({'data_dir': data_dir}, workdir, f'--config.compilation_cache_dir={cache_dir}',
                 '--config.num_steps=4', '--config.eval_every_steps=4', '--config.log_images_every_steps=0')
  out = subprocess.run(cmd, env=env, cwd=e2e.REPO, capture_output=True, text=True, timeout=e2e.RUN_TIMEOUT)
  assert out.returncode == 0, out.stderr[-5000:]
  return out.stderr


@pytest.mark.slow  # two processes (~40 s here); test_train_e2e.py checks the env-var directory and a reuse
def test_a_fresh_run_loads_its_steps_from_the_configured_cache(digits_data_dir, tmp_path):
  cache = str(tmp_path / 'xla_cache')
  log = _run(digits_data_dir, str(tmp_path / 'first'), cache)
  assert f'Compilation cache: {cache} (from config.compilation_cache_dir; stores programs that compile in >= 0s)' \
      in log
  assert '(compilation cache: 0 programs loaded, ' in log
  entries = _entries(cache)
  assert any(e.startswith('jit_train_step-') for e in entries), entries
  assert any(e.startswith('jit_eval_step-') for e in entries), entries

  log = _run(digits_data_dir, str(tmp_path / 'second'), cache)  # a new workdir: trains from scratch
  first_step = next(line for line in log.splitlines() if 'First step (compilation included)' in line)
  assert first_step.endswith(' written).') and ' 0 programs loaded' not in first_step
  assert first_step.endswith(' programs loaded, 0 written).'), first_step
  assert _entries(cache) == entries  # every program, the eval step's too, came from the cache
  assert 'Training finished: 4 steps' in log
