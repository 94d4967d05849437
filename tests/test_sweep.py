"""Sweeps (hatnet_jax.sweep): the API, names, validation, --dry_run, the runner's bookkeeping (with a stand-in
trainer: skip / resume / failure / SIGTERM) and a real 2x2 digits sweep through main.py end to end.

The real sweep sweeps seed x data.crop_scale: neither changes a compiled program (the seed is an input, the
crop runs in tf.data), so with one persistent compilation cache the four points compile once and the test
stays within a few minutes on 2 CPU cores. learning rate x drop path (configs/sweeps/digits_lr.py) is
checked with --dry_run.
"""
import csv
import dataclasses
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from hatnet_jax import sweep as sw

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
  name = sw.point_name({'drop_path_rate': 0.1, 'base_lr': 5e-4})
  assert name == 'base_lr=0.0005,drop_path_rate=0.1'
  assert sw.point_name({'base_lr': 5e-4, 'drop_path_rate': 0.1}) == name  # order given does not matter
  assert sw.point_name({'data.crop_scale': (0.6, 1.0), 'model': 'a b/c'}) == 'data.crop_scale=0.6-1.0,model=a_b_c'
  assert sw.point_name({'min_lr': 1e-5, 'remat': True}) == 'min_lr=1e-05,remat=True'
  assert sw.point_name({}) == 'base'
  long = sw.point_name({'model_overrides.dims': tuple(range(100))})
  other = sw.point_name({'model_overrides.dims': tuple(range(101))})
  assert len(long) == sw.MAX_NAME_LEN and long != other
  for n in (name, long):
    assert '/' not in n and not n.startswith(('.', '-'))


def test_cli_values_parse_back_through_config_flags():
  point = {'base_lr': 1e-05, 'remat': True, 'data.crop_scale': (0.5, 1.0), 'model': 'hatnet_small',
           'data.image_size': 32, 'model_overrides.dims': (8, 16)}
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
  with pytest.raises(sw.SweepError, match=r"no field 'drop_pth_rate'; did you mean drop_path_rate"):
    sw.make_points(DIGITS, workdir, sw.product(sw.sweep('base_lr', [1e-3]), sw.sweep('drop_pth_rate', [0.1])))
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
  assert p.workdir == os.path.join(workdir, 'num_steps=3') and p.num_steps == 3
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
        {'base_lr': config.base_lr, 'drop_path_rate': config.drop_path_rate, 'num_epochs': 10})
    seen.add((config.base_lr, config.drop_path_rate))
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


# ---------------------------------------------------------------------------------------------------------
# The runner, with a stand-in for main.py that keeps the trainer's contract on disk: step directories in
# WORKDIR/checkpoints, resume from the latest, SIGTERM -> checkpoint and exit 0, errors -> traceback, exit 1.

FAKE_MAIN = '''
import os, signal, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
args = dict(a[2:].split('=', 1) for a in sys.argv[1:] if a.startswith('--') and '=' in a)
workdir, num_steps = args['workdir'], int(args['config.num_steps'])
ckpt = os.path.join(workdir, 'checkpoints')
os.makedirs(ckpt, exist_ok=True)
start = max([int(d) for d in os.listdir(ckpt) if d.isdigit()], default=0)
with open(os.path.join(workdir, 'calls.txt'), 'a') as f:
  f.write(f'{start}\\n')
print(f'Training from step {start} to {num_steps}.', flush=True)
if args.get('config.model') == 'broken':
  print('Traceback (most recent call last):\\n  File "train.py", line 1\\n'
        "ValueError: unknown model 'broken' (config.model)", file=sys.stderr)
  sys.exit(1)
for step in range(start + 1, num_steps + 1):
  time.sleep(float(os.environ.get('FAKE_STEP_SECONDS', '0')))
  os.makedirs(os.path.join(ckpt, str(step)))
  if stop:
    print(f'Preempted: saved a checkpoint at step {step}', flush=True)
    break
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


def test_runner_skips_finished_resumes_unfinished_and_reports_failures(tmp_path):
  points = _fake_points(tmp_path, [{'seed': 0}, {'seed': 1}, {'model': 'broken'}, {'seed': 2}])
  done, half, broken, fresh = points
  os.makedirs(os.path.join(done.workdir, 'checkpoints', '4'))  # finished earlier
  os.makedirs(os.path.join(half.workdir, 'checkpoints', '2'))  # interrupted at step 2
  messages = []
  rows, status = sw.run_sweep(points, str(tmp_path / 'sweep'), log=messages.append)
  assert status == 1  # a point failed
  assert _calls(done) == [] and _calls(half) == ['2'] and _calls(fresh) == ['0'] and _calls(broken) == ['0']
  assert sw.checkpoint_steps(half.workdir) == [2, 3, 4] and sw.checkpoint_steps(fresh.workdir) == [1, 2, 3, 4]
  summary = _summary(str(tmp_path / 'sweep'))
  assert {k: r['status'] for k, r in summary.items()} == {
      done.name: 'finished-earlier', half.name: 'finished', fresh.name: 'finished', broken.name: 'failed'}
  assert summary[broken.name]['error'] == ("exit status 1: ValueError: unknown model 'broken' (config.model)")
  assert list(summary)[-1] == broken.name  # no top-1: last
  assert 'resuming from step 2' in messages[1]
  with open(os.path.join(str(tmp_path / 'sweep'), 'summary.md')) as f:
    md = f.read()
  assert md.count('\n| ') == 5 and "unknown model 'broken'" in md
  # Relaunching runs only the failed point again.
  rows, status = sw.run_sweep(points, str(tmp_path / 'sweep'), log=messages.append)
  assert status == 1 and _calls(broken) == ['0', '0'] and _calls(half) == ['2'] and _calls(fresh) == ['0']


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
  stopped_at = sw.checkpoint_steps(points[0].workdir)[-1]
  assert 1 <= stopped_at < 20
  rows, status = sw.run_sweep(points, str(tmp_path / 'sweep'), log=lambda _: None)
  assert status == 0 and _calls(points[0]) == ['0', str(stopped_at)] and _calls(points[1]) == ['0']


# ---------------------------------------------------------------------------------------------------------
# End to end through main.py.


def _tree(point_dir):
  """{relative path: mtime} of everything a run wrote (events, checkpoints, logs)."""
  out = {}
  for root, _, files in os.walk(point_dir):
    for f in files:
      path = os.path.join(root, f)
      out[os.path.relpath(path, point_dir)] = os.stat(path).st_mtime_ns
  return out


def test_digits_sweep_end_to_end(tmp_path):
  grid = "product(sweep('seed', [0, 1]), sweep('data.crop_scale', [(0.6, 1.0), (0.9, 1.0)]))"
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
        return chainit(points[:1], [{{'model': 'hatnet_nonexistent'}}], points[1:])
      '''))
  workdir = str(tmp_path / 'sweep')
  flags = [f'--config={TINY}', f'--workdir={workdir}', '--config.num_steps=4', '--config.eval_every_steps=2',
           '--config.checkpoint_every_steps=2', '--config.log_images_every_steps=0',
           f'--config.data.data_dir={tmp_path / "tfds"}']
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1', JAX_PLATFORMS='cpu',
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'jax_cache'), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0', TF_CPP_MIN_LOG_LEVEL='2')

  out = _sweep_cli(*flags, f'--sweep={tmp_path / "grid_and_bad.py"}', env=env, timeout=TIMEOUT)
  assert out.returncode == 1, out.stderr[-5000:]  # the bad point failed
  points = sw.make_points(TINY, workdir, sw.load_sweep(str(tmp_path / 'grid.py')), {'num_steps': 4})
  bad = sw.point_name({'model': 'hatnet_nonexistent'})
  assert sorted(os.listdir(workdir)) == sorted([p.name for p in points] + [bad, 'summary.csv', 'summary.md',
                                                                           'sweep.json'])
  summary = _summary(workdir)
  assert list(summary)[-1] == bad
  assert summary[bad]['status'] == 'failed' and "unknown model 'hatnet_nonexistent'" in summary[bad]['error']
  assert summary[bad]['best_top1'] == '' and sw.checkpoint_steps(os.path.join(workdir, bad)) == []
  best = [float(r['best_top1']) for r in summary.values() if r['best_top1']]
  assert len(best) == 4 and best == sorted(best, reverse=True)
  for point in points:
    assert sw.checkpoint_steps(point.workdir) == [2, 4]
    events = sw.read_events(point.workdir)
    # The overrides are in the HParams plugin data (with the rest of the config).
    assert events.hparams['seed'] == point.overrides['seed']
    assert events.hparams['data.crop_scale'] == str(point.overrides['data.crop_scale'])
    assert events.hparams['num_steps'] == 4 and events.hparams['model'] == 'hatnet_tiny'
    top1, loss = events.scalars['eval_top1'], events.scalars['eval_loss']
    assert sorted(top1) == [2, 4]
    row = summary[point.name]
    assert row['status'] == 'finished' and row['steps'] == '4' and row['total_steps'] == '4'
    assert float(row['final_top1']) == pytest.approx(top1[4]) and float(row['best_top1']) == max(top1.values())
    assert float(row['final_eval_loss']) == pytest.approx(loss[4]) and float(row['wall_time_s']) > 0
    assert row['error'] == ''
    # Had the run been given in epochs, its length would follow from the trainer's 'epoch' scalar.
    with open(os.path.join(point.workdir, sw.LOG_FILE)) as f:
      per_epoch = int(re.search(r'\((\d+) per epoch\)', f.read()).group(1))
    assert sw.total_steps(dataclasses.replace(point, num_steps=None, num_epochs=3)) == 3 * per_epoch
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
