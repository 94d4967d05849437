"""Run records (hatnet_jax.training.run_record): metrics.jsonl through the clu writer, run.json's life cycle."""
import json
import os
import time

import numpy as np
import pytest

from hatnet_jax.training import run_record


def test_jsonl_writer_appends_scalars_only(tmp_path):
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  writer = run_record.JsonlWriter(str(tmp_path))
  assert isinstance(writer, metric_writers.MetricWriter)
  writer.write_scalars(1, {'loss': np.float32(0.5), 'acc': np.array([0.25]), 'n': 3})
  writer.write_summaries(2, {'lr': np.array(0.1), 'vector': np.arange(3)})
  writer.write_images(2, {'img': np.zeros((1, 2, 2, 3), np.uint8)})
  writer.write_histograms(2, {'h': np.arange(5)})
  writer.write_texts(2, {'t': 'hello'})
  writer.write_hparams({'lr': 0.1})
  writer.write_scalars(3, {'loss': float('nan')})
  writer.flush()
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert len(lines) == 3
  rows = [json.loads(l) for l in lines]
  assert rows[0]['step'] == 1 and rows[0]['loss'] == 0.5 and rows[0]['acc'] == 0.25 and rows[0]['n'] == 3.0
  assert abs(rows[0]['time'] - time.time()) < 60
  assert rows[1] == {'step': 2, 'time': rows[1]['time'], 'lr': pytest.approx(0.1)}
  writer.close()
  writer2 = run_record.JsonlWriter(str(tmp_path))  # a resumed run appends
  writer2.write_scalars(4, {'loss': 0.25})
  writer2.close()
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 5, "loss": 0.')  # a line cut short by a kill
  history = run_record.scalar_history(str(tmp_path))
  assert history['loss'][1] == 0.5 and np.isnan(history['loss'][3]) and history['loss'][4] == 0.25
  assert 5 not in history['loss']


def test_create_writer_joins_default_and_jsonl(tmp_path):
  writer = run_record.create_writer(str(tmp_path))
  writer.write_scalars(7, {'train_loss': 1.5})
  writer.close()
  assert run_record.read_metrics(str(tmp_path))[0]['train_loss'] == 1.5
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(tmp_path))


def test_run_record_life_cycle_and_atomic_writes(tmp_path, monkeypatch):
  workdir = str(tmp_path / 'run')
  assert run_record.read(workdir) is None
  record = run_record.RunRecord(workdir)
  record.start(num_steps=10, steps_per_epoch=5, task='classification', hparams={'base_lr': 0.1}, step=0)
  data = run_record.read(workdir)
  assert data['status'] == 'running' and data['num_steps'] == 10 and data['steps_per_epoch'] == 5
  assert data['step'] == 0 and data['checkpoint_step'] is None and data['best'] is None
  assert data['hparams'] == {'base_lr': 0.1} and data['task'] == 'classification' and data['error'] is None
  record.update(step=4, eval_metrics={'eval_top1': np.float32(0.5), 'eval_loss': 1.0}, best_metric_name='eval_top1')
  record.update(step=4, checkpoint_step=4)
  record.update(step=8, eval_metrics={'eval_top1': 0.25, 'eval_loss': 0.9}, best_metric_name='eval_top1')

  # The write is atomic: a failure while writing leaves the previous file whole.
  def broken_dump(*args, **kwargs):
    raise OSError('disk full')
  monkeypatch.setattr(run_record.json, 'dump', broken_dump)
  with pytest.raises(OSError):
    record.update(step=9)
  monkeypatch.undo()
  data = run_record.read(workdir)
  assert data['step'] == 8 and data['checkpoint_step'] == 4
  assert data['best'] == {'metric': 'eval_top1', 'value': 0.5, 'step': 4, 'higher_is_better': True}
  assert data['final_metrics'] == {'eval_top1': 0.25, 'eval_loss': 0.9}
  assert not run_record.is_finished(data)
  record.finish('finished', step=10)
  data = run_record.read(workdir)
  assert data['status'] == 'finished' and run_record.is_finished(data)
  # A partial/corrupt file reads as None.
  (tmp_path / 'run' / 'run.json').write_text('{"status": "runn')
  assert run_record.read(workdir) is None


def test_resume_adds_wall_time_and_keeps_the_best(tmp_path):
  workdir = str(tmp_path)
  record = run_record.RunRecord(workdir)
  writer = run_record.JsonlWriter(workdir)
  record.start(num_steps=10, steps_per_epoch=5, task='classification', hparams={}, step=0)
  for step, top1 in ((2, 0.5), (3, 0.4), (6, 0.7)):
    writer.write_scalars(step, {'eval_top1': top1})
    record.update(step=step, eval_metrics={'eval_top1': top1}, best_metric_name='eval_top1')
  writer.close()
  record.update(step=4, checkpoint_step=4)
  record.finish('preempted')
  first = run_record.read(workdir)
  data = dict(first, wall_time_s=100.0)  # pretend the first session took 100 s
  run_record.write_atomic(os.path.join(workdir, 'run.json'), data)
  resumed = run_record.RunRecord(workdir)
  resumed.start(num_steps=10, steps_per_epoch=5, task='classification', hparams={}, step=4)
  data = run_record.read(workdir)
  assert data['status'] == 'running' and data['started'] == first['started']
  assert 100.0 <= data['wall_time_s'] < 160.0
  assert data['best'] == {'metric': 'eval_top1', 'value': 0.5, 'step': 2, 'higher_is_better': True}  # step 6 is redone
  assert data['checkpoint_step'] == 4


def test_failed_status_has_the_error_line(tmp_path):
  record = run_record.RunRecord(str(tmp_path))
  record.start(num_steps=10, steps_per_epoch=5, task='classification', hparams={}, step=0)
  try:
    raise FloatingPointError('The loss became NaN at step 3;\nmore details\nand more')
  except FloatingPointError as e:
    record.fail(e)
  data = run_record.read(str(tmp_path))
  assert data['status'] == 'failed'
  assert data['error'] == 'FloatingPointError: The loss became NaN at step 3;'
  assert run_record.status_of(KeyboardInterrupt()) == ('interrupted', 'KeyboardInterrupt')
  with pytest.raises(ValueError):
    record.finish('done')


def test_inactive_record_writes_nothing(tmp_path):
  record = run_record.RunRecord(str(tmp_path), active=False)
  record.start(num_steps=1, steps_per_epoch=1, task='classification', hparams={})
  record.finish('finished')
  assert not os.listdir(tmp_path)
