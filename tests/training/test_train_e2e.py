"""End to end through main.py (subprocesses, fake CPU devices, configs/digits.py:tiny = a 1-stage HAT-Net on
16x16 digits, 12 steps): checkpoints + TensorBoard events, eval mode, SIGKILL + restart is bitwise the
uninterrupted run, SIGTERM saves at the reached step, 8 -> 4 device restore, 2 processes == 1 process.

All runs share one persistent JAX compilation cache, so runs of the same program compile once.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tests import REPO_ROOT

REPO = REPO_ROOT
TINY = os.path.join(REPO, 'configs', 'digits.py') + ':tiny'
NUM_STEPS = 12  # configs/digits.py:tiny
RUN_TIMEOUT = 420
SCALARS = ('train_loss', 'train_accuracy', 'learning_rate', 'grad_norm', 'param_norm', 'steps_per_sec',
           'images_per_sec', 'images_per_sec_per_device', 'eval_loss', 'eval_top1', 'eval_top5')


@pytest.fixture(scope='module')
def shared(tmp_path_factory, digits_data_dir):
  """The prepared digits dataset and one compilation cache for all runs."""
  root = tmp_path_factory.mktemp('e2e')
  return {'data_dir': digits_data_dir, 'cache': str(root / 'jax_cache'), 'root': root}


def _env(shared, devices):
  env = dict(os.environ)
  env.update(XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}', JAX_PLATFORMS='cpu',
             JAX_COMPILATION_CACHE_DIR=shared['cache'], JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0', TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1')
  return env


def _cmd(shared, workdir, *flags):
  return [sys.executable, os.path.join(REPO, 'main.py'), f'--config={TINY}', f'--workdir={workdir}',
          f'--config.data.data_dir={shared["data_dir"]}', *flags]


def _run(shared, workdir, *flags, devices=8):
  out = subprocess.run(_cmd(shared, workdir, *flags), env=_env(shared, devices), cwd=REPO, capture_output=True,
                       text=True, timeout=RUN_TIMEOUT)
  assert out.returncode == 0, out.stderr[-5000:]
  return out.stderr


def _steps(workdir):
  ckdir = os.path.join(workdir, 'checkpoints')
  return sorted(int(d) for d in os.listdir(ckdir) if d.isdigit()) if os.path.isdir(ckdir) else []


def _load_state(workdir, step):
  """The saved TrainState of `step` as a dict of numpy arrays (whatever the device count at save time)."""
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  ckptr = ocp.PyTreeCheckpointer()
  meta = ckptr.metadata(path)
  meta = getattr(meta, 'item_metadata', meta)
  meta = getattr(meta, 'tree', meta)
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
  return ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))


def _events(workdir):
  """{tag: {step: value}} of the scalars, and the set of all tags, from the event files in workdir."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(str(workdir), size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  tags = set(acc.Tags()['tensors'])
  scalars = {}
  for tag in tags:
    for event in acc.Tensors(tag):
      value = tensor_util.make_ndarray(event.tensor_proto)
      if value.ndim == 0 and value.dtype.kind == 'f':
        scalars.setdefault(tag, {})[event.step] = float(value)
  return scalars, tags | set(acc.summary_metadata)


@pytest.mark.slow  # its own compilation (~40 s here); the step-level guard is in test_train_step.py
def test_nonfinite_loss_stops_with_the_last_good_checkpoint(digits_data_dir, tmp_path):
  from configs import digits  # pylint: disable=g-import-not-at-top
  from hatnet_jax.training import train  # pylint: disable=g-import-not-at-top
  config = digits.get_config('tiny')
  config.data.data_dir = digits_data_dir
  config.compilation_cache_dir = ''  # in-process: leave JAX's cache (and ~/.cache) alone
  config.base_lr = 1e30  # the 2nd update (mid-warmup) overflows the parameters
  config.checkpoint_every_steps = 1
  workdir = str(tmp_path / 'nan')
  with pytest.raises(FloatingPointError, match=r'update from step 1 to 2.*last good checkpoint is step 1 in'):
    train.train_and_evaluate(config, workdir)
  assert _steps(workdir) == [1]
  params = _load_state(workdir, 1)['params']
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


@pytest.fixture(scope='module')
def reference(shared):
  """The uninterrupted run on 8 devices: (workdir, stderr)."""
  workdir = str(shared['root'] / 'reference')
  return workdir, _run(shared, workdir, '--config.log_attention_maps=2')


def test_trains_evaluates_writes_checkpoints_and_events(reference, shared):
  workdir, log = reference
  assert _steps(workdir) == [4, 6, 8, 12]  # every 4 steps, the evals (keep best), the end
  scalars, tags = _events(workdir)
  for name in SCALARS:
    assert name in scalars, (name, sorted(scalars))
  assert sorted(scalars['train_loss']) == list(range(1, NUM_STEPS + 1))
  assert sorted(scalars['eval_top1']) == [6, 12]
  assert all(np.isfinite(v) for v in scalars['train_loss'].values())
  assert 0.0 <= scalars['eval_top1'][12] <= scalars['eval_top5'][12] <= 1.0
  assert scalars['learning_rate'][3] == pytest.approx(5e-4)  # warmup of 2 steps to 2e-3 * 16 / 64
  assert 'train_images' in tags and 'eval_attention_maps' in tags  # the attention-map pictures
  assert any(tag.startswith('_hparams_') for tag in tags)
  assert 'Evaluation at step 12' in log and 'ETA' in log and 'Step 12/12 (100.0%)' in log
  assert f'Compilation cache: {shared["cache"]} (from JAX_COMPILATION_CACHE_DIR, which wins over' in log
  assert 'Training finished: 12 steps (12 this session)' in log.strip().splitlines()[-1]

  # Evaluation only: restores the latest checkpoint and reports the same numbers.
  log = _run(shared, workdir, '--config.mode=eval')
  assert f'Evaluation of step 12: top-1 {100 * scalars["eval_top1"][12]:.2f}%' in log
  assert 'Training' not in log and 'steps' not in log  # eval mode logs only evaluation facts
  assert _steps(workdir) == [4, 6, 8, 12]


def _kill_after_the_first_checkpoint(shared, workdir, devices=8):
  """Starts a run, SIGKILLs it as soon as it has a checkpoint, and restarts it; returns the restart's log."""
  proc = subprocess.Popen(_cmd(shared, workdir), env=_env(shared, devices), cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + RUN_TIMEOUT
  while not _steps(workdir) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  killed_at = _steps(workdir)
  assert killed_at and max(killed_at) < NUM_STEPS, killed_at  # killed mid-way, with a checkpoint

  log = _run(shared, workdir, devices=devices)
  assert f'Restored checkpoint at step {max(killed_at)}' in log
  first_step = next(line for line in log.splitlines() if 'First step (compilation included)' in line)
  assert '(compilation cache: ' in first_step and ' 0 programs loaded' not in first_step  # compiled earlier
  return log


def test_sigkill_and_restart_gives_bitwise_the_uninterrupted_run(reference, shared, tmp_path):
  ref_dir, _ = reference
  workdir = str(tmp_path / 'killed')
  _kill_after_the_first_checkpoint(shared, workdir)
  _assert_same_final_state(workdir, ref_dir)


@pytest.mark.slow  # two more compilations (~1 min)
def test_one_device_runs_the_native_kernel_and_sigkill_restart_is_bitwise(shared, tmp_path):
  """On one CPU device 'auto' takes the native SiLU-depthwise-SiLU kernel (models/fused_depthwise.py)."""
  ref_dir, workdir = str(tmp_path / 'one_device'), str(tmp_path / 'one_device_killed')
  log = _run(shared, ref_dir, devices=1)
  assert 'Native CPU kernel SiLU -> depthwise -> SiLU' in log
  log = _kill_after_the_first_checkpoint(shared, workdir, devices=1)
  assert 'Native CPU kernel SiLU -> depthwise -> SiLU' in log
  _assert_same_final_state(workdir, ref_dir)


def _assert_same_final_state(workdir, ref_dir, step=NUM_STEPS):
  """The checkpoints of `step` in both workdirs hold the same tree, bit for bit (the task e2e tests use it too)."""
  resumed, uninterrupted = _load_state(workdir, step), _load_state(ref_dir, step)
  flat_a = jax.tree_util.tree_flatten_with_path(resumed)[0]
  flat_b = jax.tree_util.tree_flatten_with_path(uninterrupted)[0]
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (path, a), (_, b) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def test_ctrl_c_saves_at_the_reached_step_and_a_restart_continues_bitwise(reference, shared, tmp_path):
  workdir = str(tmp_path / 'ctrl_c')
  # SIGINT at its default in the child (a shell's background job would ignore it).
  proc = subprocess.Popen(_cmd(shared, workdir), env=_env(shared, 8), cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  lines = []
  for line in proc.stderr:
    lines.append(line)
    if 'Step 5/12' in line:
      proc.send_signal(signal.SIGINT)
  proc.wait(timeout=RUN_TIMEOUT)
  log = ''.join(lines)
  assert proc.returncode == 130, log[-3000:]
  assert 'Traceback' not in log and 'KeyboardInterrupt' not in log
  last = log.strip().splitlines()[-1]
  reached = int(re.search(r'Interrupted \(Ctrl-C\) at step (\d+)', last).group(1))
  assert 5 <= reached < NUM_STEPS and reached in _steps(workdir), (last, _steps(workdir))
  assert int(_load_state(workdir, reached)['step']) == reached
  log = _run(shared, workdir)
  assert f'Restored checkpoint at step {reached}' in log
  _assert_same_final_state(workdir, reference[0])


@pytest.mark.slow  # default suite under 15 min on the 2-core EPYC (16:00 there)
@pytest.mark.parametrize('how', ['truncate', 'delete', 'json'])
def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_run_ends_bitwise(reference, shared, tmp_path, how):
  from tests.training.test_train_checkpoint import _damage  # pylint: disable=g-import-not-at-top
  ref_dir, _ = reference
  workdir = tmp_path / 'damaged'
  for step in (4, 6, 8):
    shutil.copytree(os.path.join(ref_dir, 'checkpoints', str(step)), workdir / 'checkpoints' / str(step))
  _damage(str(workdir / 'checkpoints' / '8'), how)
  log = _run(shared, str(workdir))
  warnings = [l for l in log.splitlines() if 'could not be restored' in l]
  assert len(warnings) == 1 and 'step 8' in warnings[0] and '8.damaged' in warnings[0], log[-3000:]
  assert 'Restored checkpoint at step 6' in log and 'Event loop is closed' not in log
  assert (workdir / 'checkpoints' / '8.damaged').is_dir()
  _assert_same_final_state(str(workdir), ref_dir)


@pytest.mark.slow  # default suite under 15 min on the 2-core EPYC (16:00 there)
def test_an_undecodable_eval_image_is_named_after_a_checkpoint_of_its_step(shared, tmp_path):
  from hatnet_jax.data import testing  # pylint: disable=g-import-not-at-top
  root = testing.make_image_folder(str(tmp_path / 'images'), {'train': {'a': 8, 'b': 8},
                                                               'validation': {'a': 2, 'b': 2}})
  with open(os.path.join(root, 'validation', 'b', 'broken.jpg'), 'wb') as f:
    f.write(testing.corrupt_jpeg(np.random.default_rng(0)))
  workdir = str(tmp_path / 'run')
  out = subprocess.run(_cmd(shared, workdir, '--config.data.dataset=image_folder', f'--config.data.manual_dir={root}',
                            '--config.data.cache=False', '--config.data.eval_split=validation'),
                       env=_env(shared, 8), cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT)
  assert out.returncode == 1, out.stderr[-3000:]
  for crash in ('Traceback', 'terminate called', 'Fatal Python error', 'Aborted'):
    assert crash not in out.stderr, out.stderr[-3000:]
  tail = out.stderr[out.stderr.rindex('Error: '):]
  assert "eval split 'validation' could not be decoded" in tail and 'validation/b/broken.jpg' in tail
  assert _steps(workdir) == [4, 6]  # the first evaluation (step 6) came after its checkpoint


@pytest.mark.slow  # default suite under 15 min on the 2-core EPYC (16:00 there)
def test_sigterm_saves_a_checkpoint_at_the_reached_step(reference, shared, tmp_path):
  workdir = str(tmp_path / 'preempted')
  proc = subprocess.Popen(_cmd(shared, workdir), env=_env(shared, 8), cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  lines = []
  for line in proc.stderr:
    lines.append(line)
    if 'Training from step 0' in line:
      proc.send_signal(signal.SIGTERM)  # arrives before or during the first step
  proc.wait(timeout=RUN_TIMEOUT)
  log = ''.join(lines)
  assert proc.returncode == 0, log[-5000:]
  reached = [int(re.search(r'at step (\d+)', l).group(1)) for l in lines if 'Preempted: saved a checkpoint' in l]
  assert reached and 1 <= reached[0] < NUM_STEPS, log[-3000:]
  assert _steps(workdir) == [reached[0]]
  assert int(_load_state(workdir, reached[0])['step']) == reached[0]
  # The same step as the uninterrupted run at that point (the checkpoint is complete, not just present).
  if reached[0] in _steps(reference[0]):
    jax.tree.map(np.testing.assert_array_equal, _load_state(workdir, reached[0])['params'],
                 _load_state(reference[0], reached[0])['params'])


@pytest.mark.slow
def test_checkpoint_from_8_devices_continues_on_4(reference, shared, tmp_path):
  ref_dir, _ = reference
  workdir = str(tmp_path / 'on4')
  shutil.copytree(os.path.join(ref_dir, 'checkpoints', '6'), os.path.join(workdir, 'checkpoints', '6'))
  log = _run(shared, workdir, devices=4)
  assert 'Restored checkpoint at step 6' in log and '4 global devices' in log
  assert _steps(workdir) == [6, 8, 12]
  ref, _ = _events(ref_dir)
  on4, _ = _events(workdir)
  steps = range(7, NUM_STEPS + 1)  # the same loss curve as on 8 devices, up to float reduction order
  np.testing.assert_allclose([on4['train_loss'][s] for s in steps], [ref['train_loss'][s] for s in steps],
                             rtol=1e-4)
  np.testing.assert_allclose(on4['eval_top1'][12], ref['eval_top1'][12])


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_give_the_loss_curve_of_one(reference, shared, tmp_path):
  workdir = str(tmp_path / 'two_processes')
  address = f'127.0.0.1:{_free_port()}'
  procs = [subprocess.Popen(_cmd(shared, workdir, f'--coordinator_address={address}', '--num_processes=2',
                                 f'--process_id={i}'), env=_env(shared, 4), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  logs = [p.communicate(timeout=RUN_TIMEOUT)[1] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-5000:]
  assert 'JAX process 1/2' in logs[1] and '8 global devices' in logs[0]
  assert _steps(workdir) == [4, 6, 8, 12]
  ref, _ = _events(reference[0])
  two, _ = _events(workdir)
  steps = range(1, NUM_STEPS + 1)
  np.testing.assert_allclose([two['train_loss'][s] for s in steps], [ref['train_loss'][s] for s in steps], rtol=1e-5)
  np.testing.assert_allclose(two['eval_top1'][12], ref['eval_top1'][12])
