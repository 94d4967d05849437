"""Bad settings fail with a clear message before anything is compiled or written."""
import os

import jax
import pytest
from jax._src import monitoring  # pylint: disable=g-importing-member

from configs import digits
from hatnet_jax.training import train

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
    (dict(model=dict(name='hatnet_nano')), ValueError, r"unknown model 'hatnet_nano'.*hatnet_tiny"),
    (dict(model=dict(dtype='bf17')), ValueError, r"model dtype='bf17' is not a dtype"),
    (dict(batch_size=12), ValueError, r'batch_size=12 .* multiple of the device count \(8'),
    (dict(batch_size=16, grad_accum_steps=4), ValueError, r'x config.grad_accum_steps \(4\) = 32'),
    (dict(data=dict(image_size=0)), ValueError, r'config.data.image_size=0: give the side of the square training crop'),
    (dict(data=dict(device_resize=8)), ValueError, r'config.data.device_resize=8 is smaller than config.data.image_size=16'),
    (dict(data=dict(interpolation='lanczos3')), ValueError, r"resizes with bicubic or bilinear; config.data.interpolation is "
     r"'lanczos3': set config.data.device_resize=0"),
    (dict(mode='predict'), ValueError, r"config.mode must be one of \('train', 'eval'\)"),
    (dict(task='panoptic'), ValueError, r"config.task='panoptic' is not a task; choose one of \['classification"),
    (dict(init_from='/no/such/dir'), FileNotFoundError, r'init_from=/no/such/dir does not exist. config.init_from '
     r'takes a directory written by `python -m hatnet_jax.tools.convert`'),
])
def test_bad_settings(tmp_path, compiles, change, error, message):
  c = _config(tmp_path)
  with c.unlocked():
    c.update_from_flattened_dict({k if not isinstance(v, dict) else f'{k}.{kk}': vv for k, v in change.items()
                                  for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)])})
  workdir = tmp_path / 'workdir'
  with pytest.raises(error, match=message):
    train.train_and_evaluate(c, str(workdir))
  assert not compiles
  assert not workdir.exists()


def test_unknown_model_override_field(tmp_path, compiles):
  c = _config(tmp_path)
  c.model.depth = (1,)  # the field is 'depths'
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


def test_init_from_a_run_workdir_says_which_path_to_use(tmp_path, compiles):
  run = tmp_path / 'run'
  for step in (4, 12):
    (run / 'checkpoints' / str(step) / 'state').mkdir(parents=True)
  c = _config(tmp_path)
  for path, want in ((run, run / 'checkpoints' / '12' / 'state'), (run / 'checkpoints' / '12',
                                                                    run / 'checkpoints' / '12' / 'state')):
    c.init_from = str(path)
    with pytest.raises(ValueError, match=f'use {want}'):
      train.train_and_evaluate(c, str(tmp_path / 'workdir'))
  (tmp_path / 'empty').mkdir()
  c.init_from = str(tmp_path / 'empty')
  with pytest.raises(ValueError, match='is not an orbax checkpoint'):
    train.train_and_evaluate(c, str(tmp_path / 'workdir'))
  assert not compiles and not (tmp_path / 'workdir').exists()


@pytest.mark.parametrize('kind', ['file', 'unwritable'])
def test_bad_workdir(tmp_path, digits_data_dir, kind):
  c = _config(tmp_path)
  c.data.data_dir = digits_data_dir
  if kind == 'file':
    workdir = tmp_path / 'a_file'
    workdir.write_text('')
    message = 'is a file; give a directory'
  else:
    workdir = '/proc/no_such_dir/run'  # cannot be created, even as root
    message = 'cannot be written'
  with pytest.raises(train.WorkdirError, match=f'--workdir=.*{message}'):
    train.train_and_evaluate(c, str(workdir))
