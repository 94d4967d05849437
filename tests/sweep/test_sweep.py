"""Sweeps (hatnet_jax.sweep): the API, names, validation, --dry_run, the runner's bookkeeping (with a stand-in
trainer that keeps the run-record contract: skip / resume / failure / SIGTERM), a real 2x2 digits sweep
through main.py end to end (summarised from the run records only) and, marked slow, the same through
submitit's local executor.

The real sweep sweeps seed x data.crop_scale: neither changes a compiled program (the seed is an input, the
crop runs in tf.data), so with one persistent compilation cache the four points compile once and the test
stays within a few minutes on 2 CPU cores. learning rate x drop path (configs/sweeps/digits_lr.py) is
checked with --dry_run.
"""
import csv
import glob
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from hatnet_jax import sweep as sw
from tests import REPO_ROOT

REPO = REPO_ROOT
DIGITS = 'configs/digits.py'
TINY = 'configs/digits.py:tiny'
TIMEOUT = 900


# ---------------------------------------------------------------------------------------------------------
# API and names.


def test_sweep_product_zip_chain():
  assert sw.sweep('base_lr', [1, 2]) == [{'base_lr': 1}, {'base_lr': 2}]
  assert sw.sweep('config.data.image_size', [8]) == [{'data.image_size': 8}]  # 'config.' prefix accepted
  grid = sw.product(sw.sweep('a', [1, 2]), sw.sweep('b', [3, 4]), sw.fixed('c', 0))
  assert grid == [{'a': 1, 'b': 3, 'c': 0}, {'a': 1, 'b': 4, 'c': 0}, {'a': 2, 'b': 3, 'c': 0},
                  {'a': 2, 'b': 4, 'c': 0}]
  assert sw.zipit(sw.sweep('a', [1, 2]), sw.sweep('b', [3, 4])) == [{'a': 1, 'b': 3}, {'a': 2, 'b': 4}]
  assert sw.chainit(sw.sweep('a', [1]), sw.sweep('b', [2])) == [{'a': 1}, {'b': 2}]
  nested = sw.product(sw.zipit(sw.sweep('lr', [1, 2]), sw.sweep('wd', [3, 4])), sw.sweep('dp', [0, 1]))
  assert len(nested) == 4 and nested[1] == {'lr': 1, 'wd': 3, 'dp': 1}
  assert sw.product() == [{}]
  with pytest.raises(sw.SweepError, match='different lengths'):
    sw.zipit(sw.sweep('a', [1, 2]), sw.sweep('b', [3]))
  with pytest.raises(sw.SweepError, match='swept twice'):
    sw.product(sw.sweep('a', [1]), sw.sweep('a', [2]))
  with pytest.raises(sw.SweepError, match='no values'):
    sw.sweep('a', [])
  with pytest.raises(sw.SweepError, match='config path'):
    sw.sweep('data/image size', [1])


def test_point_names_are_stable_and_filesystem_safe():
  name = sw.point_name({'model.drop_path_rate': 0.1, 'base_lr': 5e-4})
  assert name == 'base_lr=0.0005,model.drop_path_rate=0.1'
  assert sw.point_name({'base_lr': 5e-4, 'model.drop_path_rate': 0.1}) == name  # order given does not matter
  assert sw.point_name({'data.crop_scale': (0.6, 1.0), 'model': 'a b/c'}) == 'data.crop_scale=0.6-1.0,model=a_b_c'
  assert sw.point_name({'min_lr': 1e-5, 'remat': True}) == 'min_lr=1e-05,remat=True'
  assert sw.point_name({}) == 'base'
  long = sw.point_name({'model.dims': tuple(range(100))})
  other = sw.point_name({'model.dims': tuple(range(101))})
  assert len(long) == sw.MAX_NAME_LEN and long != other
  for n in (name, long):
    assert '/' not in n and not n.startswith(('.', '-'))


def test_cli_values_parse_back_through_config_flags():
  point = {'base_lr': 1e-05, 'model.remat': True, 'data.crop_scale': (0.5, 1.0), 'model.name': 'hatnet_small',
           'data.image_size': 32, 'model.dims': (8, 16)}
  config = sw.parse_config(DIGITS, [f'--config.{k}={sw.cli_value(v)}' for k, v in point.items()])
  for key, value in point.items():
    node = config
    for part in key.split('.'):
      node = node[part]
    assert node == value and type(node) is type(value), (key, node)
  with pytest.raises(sw.SweepError, match='None'):
    sw.cli_value(None)


# ---------------------------------------------------------------------------------------------------------
# Validation and commands.


def test_make_points_validates_every_point_up_front(tmp_path):
  workdir = str(tmp_path / 'sweep')
  with pytest.raises(sw.SweepError, match=r"no field 'model.drop_pth_rate'; did you mean model.drop_path_rate"):
    sw.make_points(DIGITS, workdir, sw.product(sw.sweep('base_lr', [1e-3]), sw.sweep('model.drop_pth_rate', [0.1])))
  with pytest.raises(sw.SweepError, match="no field 'data.image_sise'"):
    sw.make_points(DIGITS, workdir, [{'base_lr': 1e-3}, {'data.image_sise': 8}])
  with pytest.raises(sw.SweepError, match='could not convert'):
    sw.make_points(DIGITS, workdir, [{'base_lr': 'fast'}])
  with pytest.raises(sw.SweepError, match='are the same'):
    sw.make_points(DIGITS, workdir, [{'seed': 1}, {'seed': 1}])
  with pytest.raises(sw.SweepError, match='no points'):
    sw.make_points(DIGITS, workdir, [])
  with pytest.raises(sw.SweepError, match='not a dict'):
    sw.make_points(DIGITS, workdir, [('seed', 1)])
  assert not os.path.exists(workdir)


def test_commands_carry_base_and_point_overrides(tmp_path):
  workdir = str(tmp_path / 'sweep')
  points = sw.make_points(TINY, workdir, sw.sweep('num_steps', [3, 5]), {'num_steps': 2, 'batch_size': 8})
  assert [p.name for p in points] == ['num_steps=3', 'num_steps=5']
  p = points[0]
  assert p.workdir == os.path.join(workdir, 'num_steps=3') and p.settings == {'num_steps': 3}
  assert p.argv == (sys.executable, sw.MAIN, f'--config={TINY}', f'--workdir={p.workdir}',
                    '--config.batch_size=8', '--config.num_steps=3')  # the point's own value wins
  assert p.command.startswith('python ') and shlex.split(p.command)[2:] == list(p.argv[2:])


def _sweep_cli(*args, env=None, timeout=120):
  return subprocess.run([sys.executable, '-m', 'hatnet_jax.sweep', *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout, env=env)


def test_dry_run_prints_the_main_py_command_of_every_point(tmp_path):
  workdir = str(tmp_path / 'lr')
  out = _sweep_cli(f'--config={DIGITS}', '--sweep=configs/sweeps/digits_lr.py', f'--workdir={workdir}',
                   '--config.num_epochs=1', '--dry_run')
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 4
  seen = set()
  for line in lines:
    argv = shlex.split(line)
    assert argv[:3] == ['python', 'main.py', f'--config={DIGITS}'] and argv[3].startswith(f'--workdir={workdir}/')
    config = sw.parse_config(DIGITS, argv[4:])  # what main.py would train with
    assert config.num_epochs == 10  # the sweep's fixed('num_epochs', 10) wins over --config.num_epochs=1
    assert argv[3] == f'--workdir={workdir}/' + sw.point_name(
        {'base_lr': config.base_lr, 'model.drop_path_rate': config.model.drop_path_rate, 'num_epochs': 10})
    seen.add((config.base_lr, config.model.drop_path_rate))
  assert seen == {(1e-3, 0.0), (1e-3, 0.1), (3e-3, 0.0), (3e-3, 0.1)}
  assert not os.path.exists(workdir)

  out = _sweep_cli('--config=configs/hatnet_tiny.py', '--sweep=configs/sweeps/imagenet_tiny_lr_dp.py',
                   f'--workdir={workdir}', '--config.data.manual_dir=/data/imagenet', '--dry_run')
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 6 and all('--config.data.manual_dir=/data/imagenet' in l for l in lines)
  assert len({shlex.split(l)[3] for l in lines}) == 6


def test_cli_rejects_an_unknown_key_before_running_anything(tmp_path):
  bad = tmp_path / 'bad.py'
  bad.write_text('from hatnet_jax.sweep import product, sweep\n\ndef get_sweep():\n'
                 "  return product(sweep('base_lr', [1e-3, 2e-3]), sweep('data.imagesize', [8]))\n")
  workdir = tmp_path / 'sweep'
  out = _sweep_cli(f'--config={DIGITS}', f'--sweep={bad}', f'--workdir={workdir}')
  assert out.returncode == 2
  assert "has no field 'data.imagesize'; did you mean data.image_size" in out.stderr
  assert not workdir.exists()


def test_names_and_tables_show_the_effective_values(tmp_path):
  # A sweep-wide --config.num_steps=20 makes the num_epochs=10 points 20-step runs: the names say so.
  points = sw.make_points(DIGITS, str(tmp_path), sw.load_sweep('configs/sweeps/digits_lr.py'), {'num_steps': 20})
  assert points[0].name == 'base_lr=0.001,model.drop_path_rate=0.0,num_epochs=10,num_steps=20'
  assert points[0].settings == {'base_lr': 1e-3, 'model.drop_path_rate': 0.0, 'num_epochs': 10, 'num_steps': 20}
  # Values are the ones the config parsed: an int given for a float field is a float.
  (point,) = sw.make_points(DIGITS, str(tmp_path), [{'base_lr': 1}])
  assert point.name == 'base_lr=1.0' and point.settings == {'base_lr': 1.0}
  # The summary table has a column per setting, and lists the sweep-wide overrides.
  sw.write_summary(points, str(tmp_path), sweep_info={'base_overrides': {'num_steps': 20}})
  md = (tmp_path / 'summary.md').read_text()
  assert '| # | point | base_lr | model.drop_path_rate | num_epochs | num_steps | status |' in md
  assert '`--config.num_steps=20`' in md and md.count('| not-run |') == 4


def test_slurm_dry_run_adds_multihost_for_several_nodes(tmp_path):
  out = _sweep_cli(f'--config={DIGITS}', '--sweep=configs/sweeps/digits_lr.py', f'--workdir={tmp_path / "s"}',
                   '--launcher=slurm', '--slurm_nodes=2', '--dry_run')
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 4 and all(l.startswith('python ') and l.endswith(' --multihost') for l in lines)
  from hatnet_jax.sweep import slurm  # pylint: disable=g-import-not-at-top
  (point,) = sw.make_points(TINY, str(tmp_path), [{'seed': 1}])
  assert '--multihost' not in slurm.job_argv(point, slurm.SlurmOptions(nodes=1))
  assert slurm.job_argv(point, slurm.SlurmOptions(nodes=1, tasks_per_node=2))[-1] == '--multihost'


# ---------------------------------------------------------------------------------------------------------
# The runner, with a stand-in for main.py that keeps the trainer's contract on disk (hatnet_jax.training.run_record):
# run.json running -> step/checkpoint_step updates -> finished (or preempted on SIGTERM, exit 0); resume
# from run.json's checkpoint_step; errors -> traceback, exit 1.

FAKE_MAIN = '''
import json, os, signal, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
args = dict(a[2:].split('=', 1) for a in sys.argv[1:] if a.startswith('--') and '=' in a)
workdir, num_steps = args['workdir'], int(args['config.num_steps'])
os.makedirs(workdir, exist_ok=True)
path = os.path.join(workdir, 'run.json')
try:
  record = json.load(open(path))
except OSError:
  record = {}
start = record.get('checkpoint_step') or 0
with open(os.path.join(workdir, 'calls.txt'), 'a') as f:
  f.write(f'{start}\\n')
print(f'Training from step {start} to {num_steps}.', flush=True)
if args.get('config.model.name') == 'broken':
  print('Traceback (most recent call last):\\n  File "train.py", line 1\\n'
        "ValueError: unknown model 'broken' (config.model.name)", file=sys.stderr)
  sys.exit(1)

def write(**kw):
  record.update(kw)
  json.dump(record, open(path + '.tmp', 'w'))
  os.replace(path + '.tmp', path)

write(status='running', task='classification', num_steps=num_steps, steps_per_epoch=10, step=start,
      hparams={k[len('config.'):]: v for k, v in args.items() if k.startswith('config.')})
status = 'finished'
for step in range(start + 1, num_steps + 1):
  time.sleep(float(os.environ.get('FAKE_STEP_SECONDS', '0')))
  top1 = 0.1 * step + 0.01 * int(args.get('config.seed', 0))
  best = record.get('best')
  if best is None or top1 > best['value']:
    best = dict(metric='eval_top1', value=top1, step=step, higher_is_better=True)
  write(step=step, checkpoint_step=step, best=best, final_metrics={'eval_top1': top1, 'eval_loss': 1.0 / step},
        wall_time_s=(record.get('wall_time_s') or 0) + 0.5)
  if stop:
    print(f'Preempted: saved a checkpoint at step {step}', flush=True)
    status = 'preempted'
    break
write(status=status)
'''


def _fake_points(tmp_path, overrides, num_steps=4):
  main = tmp_path / 'fake_main.py'
  main.write_text(FAKE_MAIN)
  return sw.make_points(TINY, str(tmp_path / 'sweep'), overrides, {'num_steps': num_steps}, main=str(main))


def _calls(point):
  path = os.path.join(point.workdir, 'calls.txt')
  return open(path).read().split() if os.path.exists(path) else []


def _summary(workdir):
  with open(os.path.join(workdir, 'summary.csv')) as f:
    return {row['point']: row for row in csv.DictReader(f)}


def _write_record(point, **fields):
  os.makedirs(point.workdir, exist_ok=True)
  with open(os.path.join(point.workdir, 'run.json'), 'w') as f:
    json.dump({**dict(status='running', task='classification', num_steps=4, steps_per_epoch=10, step=0,
                      checkpoint_step=None, best=None, final_metrics={}, error=None, hparams={},
                      wall_time_s=1.0), **fields}, f)


def test_runner_skips_finished_resumes_unfinished_and_reports_failures(tmp_path):
  points = _fake_points(tmp_path, [{'seed': 0}, {'seed': 1}, {'model.name': 'broken'}, {'seed': 2}, {'seed': 3}])
  done, half, broken, fresh, stale = points
  _write_record(done, status='finished', step=4, checkpoint_step=4,
                best=dict(metric='eval_top1', value=0.9, step=4), final_metrics={'eval_top1': 0.9})
  _write_record(half, status='preempted', step=2, checkpoint_step=2)  # interrupted at step 2
  _write_record(stale, status='finished', step=3, checkpoint_step=3)  # 'finished' but step != num_steps
  messages = []
  rows, status = sw.run_sweep(points, str(tmp_path / 'sweep'), log=messages.append)
  assert status == 1  # a point failed
  assert _calls(done) == [] and _calls(half) == ['2'] and _calls(fresh) == ['0'] and _calls(broken) == ['0']
  assert _calls(stale) == ['3']
  summary = _summary(str(tmp_path / 'sweep'))
  assert {k: r['status'] for k, r in summary.items()} == {
      done.name: 'finished-earlier', half.name: 'finished', fresh.name: 'finished', broken.name: 'failed',
      stale.name: 'finished'}
  assert summary[broken.name]['error'] == ("exit status 1: ValueError: unknown model 'broken' (config.model.name)")
  assert list(summary) == [done.name, stale.name, fresh.name, half.name, broken.name]  # best top-1 first
  assert summary[fresh.name]['metric'] == 'eval_top1' and float(summary[fresh.name]['best']) == pytest.approx(0.42)
  assert summary[fresh.name]['steps'] == '4' and summary[fresh.name]['total_steps'] == '4'
  assert float(summary[fresh.name]['final_eval_loss']) == 0.25 and summary[fresh.name]['best_step'] == '4'
  assert 'resuming from step 2' in messages[1]
  with open(os.path.join(str(tmp_path / 'sweep'), 'summary.md')) as f:
    md = f.read()
  assert md.count('\n| ') == 6 and "unknown model 'broken'" in md and 'best eval_top1 (%)' in md
  # Relaunching runs only the failed point again.
  rows, status = sw.run_sweep(points, str(tmp_path / 'sweep'), log=messages.append)
  assert status == 1 and _calls(broken) == ['0', '0'] and _calls(half) == ['2'] and _calls(fresh) == ['0']
  # --summary_only's view (no runner): from the files alone.
  from hatnet_jax.sweep import summary as summary_lib  # pylint: disable=g-import-not-at-top
  assert [summary_lib.point_status(p) for p in points] == ['finished', 'finished', 'failed', 'finished', 'finished']


def test_a_killed_trainer_is_failed_not_running(tmp_path):
  (point,) = _fake_points(tmp_path, [{'seed': 0}])
  main = tmp_path / 'fake_main.py'
  main.write_text(FAKE_MAIN.replace("write(status=status)", "os.kill(os.getpid(), signal.SIGKILL)"))
  rows, status = sw.run_sweep([point], str(tmp_path / 'sweep'), log=lambda _: None)
  assert status == 1 and rows[0]['status'] == 'failed' and rows[0]['error'].startswith('killed by signal 9')
  with open(os.path.join(point.workdir, 'run.json')) as f:
    assert json.load(f)['status'] == 'running'  # what the trainer left; the sweep knows better
  from hatnet_jax.sweep import summary as summary_lib  # pylint: disable=g-import-not-at-top
  assert summary_lib.point_status(point) == 'failed'


def test_sigterm_checkpoints_the_running_point_and_relaunch_resumes_it(tmp_path):
  points = _fake_points(tmp_path, sw.sweep('seed', [0, 1]), num_steps=20)
  env = dict(os.environ, FAKE_STEP_SECONDS='0.2')

  def preempt_when_started():
    deadline = time.time() + 60
    while not _calls(points[0]) and time.time() < deadline:
      time.sleep(0.05)
    if _calls(points[0]):  # the point runs (never signal this process outside the sweep's handler)
      os.kill(os.getpid(), signal.SIGTERM)

  thread = threading.Thread(target=preempt_when_started)
  thread.start()
  rows, status = sw.run_sweep(points, str(tmp_path / 'sweep'), env=env, log=lambda _: None)
  thread.join()
  assert status == 128 + signal.SIGTERM
  statuses = {r['point']: r['status'] for r in rows}
  assert statuses == {points[0].name: 'incomplete', points[1].name: 'not-run'}
  with open(os.path.join(points[0].workdir, 'run.json')) as f:
    record = json.load(f)
  stopped_at = record['checkpoint_step']
  assert record['status'] == 'preempted' and 1 <= stopped_at < 20
  rows, status = sw.run_sweep(points, str(tmp_path / 'sweep'), log=lambda _: None)
  assert status == 0 and _calls(points[0]) == ['0', str(stopped_at)] and _calls(points[1]) == ['0']


# ---------------------------------------------------------------------------------------------------------
# End to end through main.py.


def _tree(point_dir):
  """{relative path: mtime} of everything a run wrote (records, events, checkpoints, logs)."""
  out = {}
  for root, _, files in os.walk(point_dir):
    for f in files:
      path = os.path.join(root, f)
      out[os.path.relpath(path, point_dir)] = os.stat(path).st_mtime_ns
  return out


def _env(tmp_path):
  return dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1', JAX_PLATFORMS='cpu',
              JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'jax_cache'), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0', TF_CPP_MIN_LOG_LEVEL='2')


def _write_grid(tmp_path, grid):
  (tmp_path / 'grid.py').write_text(textwrap.dedent(f'''
      from hatnet_jax.sweep import chainit, product, sweep

      def get_sweep():
        return {grid}
      '''))
  # The same grid with a bad point second: it fails (unknown model), the points after it still run.
  (tmp_path / 'grid_and_bad.py').write_text(textwrap.dedent(f'''
      from hatnet_jax.sweep import chainit, product, sweep

      def get_sweep():
        points = {grid}
        return chainit(points[:1], [{{'model.name': 'hatnet_nonexistent'}}], points[1:])
      '''))


def _check_finished_point(point, row, num_steps):
  with open(os.path.join(point.workdir, 'run.json')) as f:
    record = json.load(f)
  # The overrides are in the run record's hparams (with the rest of the config).
  for key, value in point.overrides.items():
    assert record['hparams'][key] == (value if isinstance(value, (int, float, str)) else str(value))
  assert record['hparams']['num_steps'] == num_steps and record['hparams']['model.name'] == 'hatnet_tiny'
  assert record['status'] == 'finished' and record['step'] == record['num_steps'] == num_steps
  assert record['checkpoint_step'] == num_steps and record['error'] is None
  top1 = {}
  with open(os.path.join(point.workdir, 'metrics.jsonl')) as f:
    for line in f:
      data = json.loads(line)
      if 'eval_top1' in data:
        top1[data['step']] = data['eval_top1']
  assert sorted(top1) == list(range(num_steps // 2, num_steps + 1, num_steps // 2))
  assert row['status'] in ('finished', 'finished-earlier') and row['steps'] == str(num_steps)
  assert row['total_steps'] == str(num_steps) and row['metric'] == 'eval_top1'
  assert float(row['final']) == pytest.approx(top1[num_steps]) and float(row['best']) == pytest.approx(max(top1.values()))
  assert float(row['final_eval_loss']) == pytest.approx(record['final_metrics']['eval_loss'])
  assert float(row['wall_time_s']) > 0 and row['error'] == ''


@pytest.mark.slow  # ~2.5 min: four real trainings; the runner's bookkeeping is covered above
def test_digits_sweep_end_to_end(tmp_path):
  _write_grid(tmp_path, "product(sweep('seed', [0, 1]), sweep('data.crop_scale', [(0.6, 1.0), (0.9, 1.0)]))")
  workdir = str(tmp_path / 'sweep')
  flags = [f'--config={TINY}', f'--workdir={workdir}', '--config.num_steps=4', '--config.eval_every_steps=2',
           '--config.checkpoint_every_steps=2', '--config.log_images_every_steps=0',
           f'--config.data.data_dir={tmp_path / "tfds"}']
  env = _env(tmp_path)

  out = _sweep_cli(*flags, f'--sweep={tmp_path / "grid_and_bad.py"}', env=env, timeout=TIMEOUT)
  assert out.returncode == 1, out.stderr[-5000:]  # the bad point failed
  points = sw.make_points(TINY, workdir, sw.load_sweep(str(tmp_path / 'grid.py')), {'num_steps': 4})
  bad = sw.point_name({'model.name': 'hatnet_nonexistent'})
  assert sorted(os.listdir(workdir)) == sorted([p.name for p in points] + [bad, 'summary.csv', 'summary.md',
                                                                           'sweep.json'])
  summary = _summary(workdir)
  assert list(summary)[-1] == bad
  assert summary[bad]['status'] == 'failed' and "unknown model 'hatnet_nonexistent'" in summary[bad]['error']
  assert summary[bad]['best'] == '' and not os.path.exists(os.path.join(workdir, bad, 'run.json'))
  best = [float(r['best']) for r in summary.values() if r['best']]
  assert len(best) == 4 and best == sorted(best, reverse=True)
  for point in points:
    _check_finished_point(point, summary[point.name], 4)
  with open(os.path.join(workdir, 'summary.md')) as f:
    md = f.read()
  assert '4 of 5 points finished' in md and md.count('\n| ') == 6 and 'hatnet_nonexistent' in md

  # Relaunching skips the finished points: nothing is trained or written again.
  before = {p.name: _tree(p.workdir) for p in points}
  start = time.time()
  out = _sweep_cli(*flags, f'--sweep={tmp_path / "grid.py"}', env=env, timeout=TIMEOUT)
  assert out.returncode == 0, out.stderr[-5000:]
  assert {p.name: _tree(p.workdir) for p in points} == before
  assert out.stderr.count('finished earlier, skipped') == 4, out.stderr
  assert time.time() - start < 60
  assert {r['status'] for r in _summary(workdir).values()} == {'finished-earlier'}

  # The summary needs only the run records: without TensorBoard events and checkpoints it is the same.
  for point in points:
    for path in glob.glob(os.path.join(point.workdir, 'events.out.tfevents.*')):
      os.remove(path)
    shutil.rmtree(os.path.join(point.workdir, 'checkpoints'))
  out = _sweep_cli(*flags, f'--sweep={tmp_path / "grid.py"}', '--summary_only', env=env)
  assert out.returncode == 0, out.stderr[-5000:]
  again = _summary(workdir)
  for point in points:
    _check_finished_point(point, again[point.name], 4)
    assert again[point.name] == dict(summary[point.name], status='finished')


@pytest.mark.slow
def test_digits_sweep_through_submitit_local(tmp_path, digits_data_dir):
  """--launcher=submitit_local: the slurm launcher's code path (submit, wait, record, summarise) with
  submitit's LocalExecutor; a real 2-point digits sweep, then a relaunch that changes nothing."""
  pytest.importorskip('submitit')
  _write_grid(tmp_path, "sweep('seed', [0, 1])")
  workdir = str(tmp_path / 'sweep')
  flags = [f'--config={TINY}', f'--workdir={workdir}', '--config.num_steps=4', '--config.eval_every_steps=2',
           '--config.checkpoint_every_steps=2', '--config.log_images_every_steps=0',
           f'--config.data.data_dir={digits_data_dir}', '--launcher=submitit_local', '--slurm_time=20',
           f'--sweep={tmp_path / "grid.py"}']
  env = _env(tmp_path)
  out = _sweep_cli(*flags, env=env, timeout=TIMEOUT)
  assert out.returncode == 0, out.stderr[-5000:]
  assert out.stderr.count('submitted job') == 2
  points = sw.make_points(TINY, workdir, sw.load_sweep(str(tmp_path / 'grid.py')), {'num_steps': 4})
  summary = _summary(workdir)
  assert {r['status'] for r in summary.values()} == {'finished'}
  for point in points:
    _check_finished_point(point, summary[point.name], 4)
    with open(os.path.join(point.workdir, sw.STATUS_FILE)) as f:
      status = json.load(f)
    assert status['status'] == 'finished' and status['attempts'][-1]['launcher'] == 'submitit:local'
    assert os.path.isdir(os.path.join(point.workdir, 'submitit'))
  before = {p.name: _tree(p.workdir) for p in points}
  out = _sweep_cli(*flags, env=env, timeout=TIMEOUT)
  assert out.returncode == 0, out.stderr[-5000:]
  assert out.stderr.count('finished earlier, skipped') == 2 and 'submitted' not in out.stderr
  assert {p.name: _tree(p.workdir) for p in points} == before
  assert {r['status'] for r in _summary(workdir).values()} == {'finished-earlier'}
