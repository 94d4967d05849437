"""Bad settings fail with a clear message before anything is compiled or written."""
import os

import jax
import pytest
from jax._src import monitoring  # pylint: disable=g-importing-member

from configs import digits
from hatnet_jax import train

_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'


@pytest.fixture
def compiles():
  """A list that collects every XLA compilation made while the test runs."""
  seen = []

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == _COMPILE_EVENT:
      seen.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  yield seen
  monitoring.unregister_event_duration_listener(listener)


def _config(tmp_path):
  c = digits.get_config('tiny')
  c.data.data_dir = str(tmp_path / 'tfds')  # empty: nothing gets that far
  return c


@pytest.mark.parametrize('change,error,message', [
    (dict(model='hatnet_nano'), ValueError, r"unknown model 'hatnet_nano'.*hatnet_tiny"),
    (dict(batch_size=12), ValueError, r'batch_size=12 .* multiple of the device count \(8'),
    (dict(batch_size=16, grad_accum_steps=4), ValueError, r'x config.grad_accum_steps \(4\) = 32'),
    (dict(mode='predict'), ValueError, r"config.mode must be one of \('train', 'eval'\)"),
    (dict(init_from='/no/such/dir'), FileNotFoundError, 'init_from'),
])
def test_bad_settings(tmp_path, compiles, change, error, message):
  c = _config(tmp_path)
  c.update(change)
  workdir = tmp_path / 'workdir'
  with pytest.raises(error, match=message):
    train.train_and_evaluate(c, str(workdir))
  assert not compiles
  assert not workdir.exists()


def test_unknown_model_override_field(tmp_path, compiles):
  c = _config(tmp_path)
  c.model_overrides.depth = (1,)  # the field is 'depths'
  with pytest.raises(ValueError, match=r"unknown model override\(s\) \['depth'\]"):
    train.train_and_evaluate(c, str(tmp_path / 'workdir'))
  assert not compiles


@pytest.mark.parametrize('dataset,message', [
    ('no_such_dataset_xyz', 'no_such_dataset_xyz'),
    ('imagenet2012', 'ILSVRC2012_img_train.tar'),  # not prepared: says which files to put where
])
def test_missing_dataset(tmp_path, compiles, dataset, message):
  c = _config(tmp_path)
  c.data.dataset = dataset
  workdir = tmp_path / 'workdir'
  with pytest.raises(Exception, match=message):
    train.train_and_evaluate(c, str(workdir))
  assert not compiles
  assert not os.path.exists(workdir)


def test_eval_mode_without_anything_to_evaluate(tmp_path, digits_data_dir):
  c = _config(tmp_path)
  c.data.data_dir = digits_data_dir
  c.mode = 'eval'
  with pytest.raises(FileNotFoundError, match='no checkpoint in .* and no config.init_from'):
    train.train_and_evaluate(c, str(tmp_path / 'workdir'))
