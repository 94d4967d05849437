"""Segmentation end to end through main.py on digit scenes (configs/seg_digits.py:tiny: a 2-stage HAT-Net
Semantic FPN, 8 steps on 96 scenes, eval on 40 of several sizes): checkpoints, mIoU in TensorBoard and
run.json, the per-class table and prediction panels, eval mode, SIGKILL + restart bitwise equal to the
uninterrupted run, and a classification checkpoint loading into the backbone."""
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from tests.training import test_train_e2e as e2e

SEG_TINY = os.path.join(e2e.REPO, 'configs', 'seg_digits.py') + ':tiny'
NUM_STEPS = 8


@pytest.fixture(scope='module')
def shared(tmp_path_factory):
  root = tmp_path_factory.mktemp('seg_e2e')
  return {'data_dir': str(root / 'tfds'), 'cache': str(root / 'jax_cache'), 'root': root}


def _cmd(shared, workdir, *flags):
  return e2e._cmd(shared, workdir, *flags)[:2] + [f'--config={SEG_TINY}', f'--workdir={workdir}',
                                                  f'--config.data.data_dir={shared["data_dir"]}', *flags]


def _run(shared, workdir, *flags):
  out = subprocess.run(_cmd(shared, workdir, *flags), env=e2e._env(shared, 8), cwd=e2e.REPO, capture_output=True,
                       text=True, timeout=e2e.RUN_TIMEOUT)
  assert out.returncode == 0, out.stderr[-5000:]
  return out.stderr


@pytest.fixture(scope='module')
def reference(shared):
  workdir = str(shared['root'] / 'reference')
  return workdir, _run(shared, workdir)


# Slow: its fixture trains and evaluates through main.py (~70 s here); the SIGKILL test below shares it, so in the
# slow run it costs only its own eval-mode run. The default suite keeps the classification end-to-end tests.
@pytest.mark.slow
def test_trains_evaluates_and_reports_miou(reference, shared):
  workdir, log = reference
  assert e2e._steps(workdir) == [4, 8]
  scalars, tags = e2e._events(workdir)
  assert sorted(scalars['eval_mIoU']) == [4, 8] and 0.0 <= scalars['eval_mIoU'][8] <= 1.0
  assert {'eval_mAcc', 'eval_aAcc', 'train_loss', 'train_pixel_accuracy'} <= set(scalars)
  assert {'eval_per_class', 'eval_input_truth_prediction'} <= tags
  assert sorted(scalars['eval_class_IoU/000_background']) == [4, 8]  # each class's IoU over training
  assert len([k for k in scalars if k.startswith('eval_class_IoU/')]) == 11
  record = json.load(open(os.path.join(workdir, 'run.json')))
  assert record['status'] == 'finished' and record['step'] == NUM_STEPS and record['task'] == 'segmentation'
  assert record['best']['metric'] == 'eval_mIoU'
  assert f'Evaluation at step 8: mIoU {100 * scalars["eval_mIoU"][8]:.2f}%' in log and 'over 40 images' in log
  log = _run(shared, workdir, '--config.mode=eval')
  assert f'Evaluation of step 8: mIoU {100 * scalars["eval_mIoU"][8]:.2f}%' in log


@pytest.mark.slow
def test_sigkill_and_restart_gives_bitwise_the_uninterrupted_run(reference, shared, tmp_path):
  workdir = str(tmp_path / 'killed')
  proc = subprocess.Popen(_cmd(shared, workdir), env=e2e._env(shared, 8), cwd=e2e.REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + e2e.RUN_TIMEOUT
  while not e2e._steps(workdir) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = e2e._steps(workdir)
  assert killed_at and max(killed_at) < NUM_STEPS, killed_at
  log = _run(shared, workdir)
  assert f'Restored checkpoint at step {max(killed_at)}' in log
  resumed, uninterrupted = e2e._load_state(workdir, NUM_STEPS), e2e._load_state(reference[0], NUM_STEPS)
  for a, b in zip(e2e.jax.tree.leaves(resumed), e2e.jax.tree.leaves(uninterrupted)):
    np.testing.assert_array_equal(a, b)
