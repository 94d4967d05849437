"""The benchmark scripts run (smallest settings) and print their figures, so they cannot rot."""
import argparse
import json
import os
import sys

import pytest

from tests import REPO_ROOT
sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))
import host_memory_flag  # noqa: E402
import input_pipeline  # noqa: E402
import model_speed  # noqa: E402
import timm_comparison  # noqa: E402
import torch_comparison  # noqa: E402


@pytest.mark.slow  # compilations of the trainer's and the bare step, the PyTorch reference twice: ~2-4 min here
def test_model_speed_smallest_setting(capsys, tmp_path):
  pytest.importorskip('torch', reason='--compare_torch needs torch (pip install -r requirements.txt)')
  out = tmp_path / 'rows.jsonl'
  model_speed.main(['--model=hatnet_tiny', '--batch_size=1', '--image_size=32', '--warmup=0', '--repeats=1',
                    '--compare_torch', f'--json_out={out}'])
  printed = capsys.readouterr().out
  row = json.loads(out.read_text().splitlines()[0])
  assert json.loads(next(line for line in printed.splitlines() if line.startswith('{'))) == row
  assert printed.startswith('host memory: not restarted (called from Python')  # not pytest's process
  # 8 fake CPU devices (tests/conftest.py): the step runs sharded over all of them.
  assert row['num_devices'] == 8 and row['batch_per_device'] == 1
  for key in ('train_images_per_s', 'infer_images_per_s', 'train_compile_s', 'train_gflops_per_image',
              'torch_train_images_per_s', 'train_speedup_vs_torch', 'peak_memory_bytes',
              'bare_train_images_per_s', 'bare_train_compile_s', 'full_over_bare_step_time',
              'torch_peak_memory_bytes'):
    assert row[key] > 0, key
  # PyTorch ran before and after the JAX measurement; its figure is the mean of the two runs
  runs = row['torch_train_images_per_s_runs']
  assert len(runs) == 2 and row['torch_train_images_per_s'] == pytest.approx(sum(runs) / 2)
  # a train step costs about 3 forward passes
  assert 2.0 < row['train_gflops_per_image'] / row['infer_gflops_per_image'] < 4.0
  assert '| float32 | 1 |' in printed and 'x PyTorch' in printed
  assert 'full step / bare model step time' in printed and 'PyTorch' in printed.splitlines()[-1]
  # The PyTorch process's own peak (VmHWM), not the JAX process's RSS it was forked from.
  assert row['torch_peak_memory_kind'] == 'host peak RSS (own process)'


@pytest.mark.slow  # generates JPEGs and times each pipeline for a moment: ~1 min here
def test_input_pipeline_smallest_setting():
  import subprocess  # pylint: disable=g-import-not-at-top
  repo = REPO_ROOT
  out = subprocess.run([sys.executable, os.path.join(repo, 'benchmarks', 'input_pipeline.py'), '--num_images=16',
                        '--batch=8', '--seconds=0.5', '--skip_device', '--compare_pil'],
                       capture_output=True, text=True, timeout=600, cwd=repo,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert out.returncode == 0, out.stderr[-3000:]
  for line in ('array_record train:', 'files        eval :', 'PIL          train:'):
    assert line in out.stdout, out.stdout[-2000:]


@pytest.mark.slow  # TF and torch start-up and a moment per pipeline: ~30 s here
def test_input_pipeline_compare_timm():
  pytest.importorskip('timm', reason=f'--compare_timm needs timm: {timm_comparison.TIMM_INSTALL}')
  import subprocess  # pylint: disable=g-import-not-at-top
  repo = REPO_ROOT
  out = subprocess.run([sys.executable, os.path.join(repo, 'benchmarks', 'input_pipeline.py'), '--num_images=8',
                        '--batch=8', '--seconds=0.3', '--sources=files', '--skip_device', '--compare_timm'],
                       capture_output=True, text=True, timeout=600, cwd=repo,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert out.returncode == 0, out.stderr[-3000:]
  for line in ('timm DeiT train transform vs ours', 'JDCT_ISLOW', 'timm :', 'ours :', 'ratio timm / ours:',
               'tf.io.decode_jpeg(INTEGER_ACCURATE)| on the first image = 0 levels'):
    assert line in out.stdout, out.stdout[-2000:]
  assert 'img per CPU-second' in out.stdout.split('timm :')[1].splitlines()[0]


def test_input_pipeline_compare_timm_without_timm(monkeypatch, capsys):
  """Without timm, --compare_timm says how to install it in one line and exits 2, before any set-up."""
  monkeypatch.setitem(sys.modules, 'timm', None)  # import timm now raises ImportError
  with pytest.raises(SystemExit) as exit_info:
    input_pipeline.main(['--compare_timm'])
  assert exit_info.value.code == 2
  captured = capsys.readouterr()
  assert captured.out == ''
  err = captured.err.strip()
  assert len(err.splitlines()) == 1 and timm_comparison.TIMM_INSTALL in err and 'Traceback' not in err, err


def test_called_from_python_the_benchmark_does_not_restart_the_caller(monkeypatch, capsys):
  # From the command line it restarts itself with glibc's huge-page tunable; from a test or a notebook that
  # would restart the caller's own process (pytest, from its first test).
  monkeypatch.setattr(os, 'execve', lambda *a: pytest.fail('the calling process was restarted'))
  monkeypatch.setattr(host_memory_flag.host_memory, 'why_not', lambda: None)
  monkeypatch.delenv('GLIBC_TUNABLES', raising=False)
  host_memory_flag.apply_host_memory_flag(argparse.Namespace(huge_pages=1), from_command_line=False)
  assert 'not restarted (called from Python' in capsys.readouterr().out


def test_bracketed_torch_figures_are_the_mean_of_both_runs_and_the_larger_peak():
  before = {'torch_train_images_per_s': 4.0, 'torch_infer_images_per_s': 20.0, 'torch_peak_memory_bytes': 7,
            'torch': '2.x'}
  after = {'torch_train_images_per_s': 6.0, 'torch_infer_images_per_s': 10.0, 'torch_peak_memory_bytes': 5,
           'torch': '2.x'}
  row = torch_comparison.bracket_torch(before, after)
  assert row['torch_train_images_per_s'] == 5.0 and row['torch_train_images_per_s_runs'] == [4.0, 6.0]
  assert row['torch_infer_images_per_s'] == 15.0 and row['torch_peak_memory_bytes'] == 7
  assert row['torch'] == '2.x'
