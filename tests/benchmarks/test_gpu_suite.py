"""benchmarks/gpu_suite.py: its plain-value configs against configs/, MFU by hand, the budget (rows skipped with
the reason, never a hang), a row's time cap, errors kept in the table, the max-batch search on fake workers, and
the --smoke run on CPU with tensorflow, clu and ml_collections absent (in every worker process too)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests import REPO_ROOT
sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))
import gpu_suite  # noqa: E402


def _leaves(d, prefix=''):
  for k, v in d.items():
    if isinstance(v, dict):
      yield from _leaves(v, f'{prefix}{k}.')
    else:
      yield f'{prefix}{k}', v


@pytest.mark.parametrize('name', ['default', 'seg_default'])
def test_plain_configs_equal_the_recipes(name):
  pytest.importorskip('ml_collections')
  import importlib  # pylint: disable=g-import-not-at-top
  import gpu_jax_rows  # pylint: disable=g-import-not-at-top
  real = importlib.import_module(f'configs.{name}').get_config().to_dict()
  plain = gpu_jax_rows.CLASSIFICATION if name == 'default' else gpu_jax_rows.SEGMENTATION
  # The benchmark's own settings (benchmarks/train_setup.py's): a finite schedule with a short warmup.
  own = {'num_steps': 1000, 'warmup_steps': 10}
  for key, value in _leaves(plain):
    if key in own:
      assert value == own[key], key
      continue
    want = real
    for part in key.split('.'):
      want = want[part]
    assert value == (dict(want) if isinstance(want, dict) else want), key
  assert ('mixup' in plain) == ('mixup' in real)


def test_mfu_is_images_times_flops_over_the_devices_peak():
  rows = [dict(status='ok', framework='jax', model='m', image_size=8, kind='train', batch=4, images_per_s=1000.0,
               device='NVIDIA H100 80GB HBM3', num_devices=1, gflops_per_image=2.0, flops_source='xla_cpu_lowered'),
          dict(status='ok', framework='torch_eager', model='m', image_size=8, kind='train', batch=4,
               images_per_s=500.0, device='NVIDIA H100 80GB HBM3'),
          dict(status='ok', framework='torch_eager', model='m', image_size=8, kind='infer', batch=4,
               images_per_s=900.0)]
  assert gpu_suite.add_mfu(rows, None) == 989.0
  assert rows[0]['tflops'] == 2.0 and rows[0]['mfu'] == pytest.approx(2.0 / 989.0)
  assert rows[1]['gflops_per_image'] == 2.0 and rows[1]['mfu'] == pytest.approx(1.0 / 989.0)  # the JAX count
  assert 'mfu' not in rows[2]  # no inference count for m
  assert gpu_suite.add_mfu(rows, 100.0) == 100.0 and rows[0]['mfu'] == pytest.approx(0.02)
  assert 'JAX / torch_eager = 2.00x' in '\n'.join(gpu_suite.ratios(rows))


def test_no_budget_skips_every_row_with_the_reason(capsys):
  rows = gpu_suite.main(['--smoke', '--budget_s=0'])
  assert rows and all(r['status'] == 'skipped' for r in rows)
  assert {r['group'] for r in rows} == set(gpu_suite.GROUPS)
  assert any('torch.compile on CPU' in r['error'] for r in rows)
  assert sum('left of the 0 s budget' in r['error'] for r in rows) == len(rows) - 2  # both torch.compile rows
  out = capsys.readouterr().out
  assert out.count('GPU_SUITE_JSON ') == len(rows) and '| group | framework |' in out


def test_only_and_unknown_groups():
  args = lambda *a: gpu_suite.main(['--smoke', '--budget_s=0', *a])
  assert {r['group'] for r in args('--only=semfpn,feed')} == {'semfpn', 'feed'}
  assert {r['framework'] for r in args('--only=tiny', '--skip=torch')} == {'jax'}
  with pytest.raises(ValueError, match='unknown groups'):
    args('--only=huge')


_FAKE = """
import json, sys, time
spec = json.loads(sys.argv[1])
if spec['kind'] == 'infer':
  time.sleep(60)
if spec['batch'] >= 8:
  print('jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory allocating', flush=True)
  sys.exit(1)
print('GPU_SUITE_ROW ' + json.dumps(dict(images_per_s=10.0 * spec['batch'], images_per_s_min=1.0,
      images_per_s_max=99.0, device='fake', peak_memory_bytes=2**30, gflops_per_image=1.0, flops_source='x')))
"""


def test_time_cap_errors_and_the_search_on_fake_workers(tmp_path, monkeypatch, capsys):
  (tmp_path / 'gpu_jax_rows.py').write_text(textwrap.dedent(_FAKE))
  monkeypatch.setattr(gpu_suite, 'BENCH', str(tmp_path))
  rows = gpu_suite.main(['--smoke', '--only=tiny,max', '--skip=torch', '--row_cap_s=3', '--min_row_s=0',
                         '--max_batch_start=2', '--max_batch_limit=64'])
  train, infer = rows[0], rows[1]
  assert train['status'] == 'ok' and train['images_per_s'] == 20.0 and train['framework'] == 'jax'
  assert infer['status'] == 'error' and 'time cap of 3 s' in infer['error'] and infer['wall_s'] < 30
  search = [r for r in rows if r['group'] == 'max']
  # Each model: 2 and 4 fit, 8 fails (out of memory), and the search stops there.
  assert [r['batch'] for r in search] == [2, 4, 8] * 2
  assert [r['status'] for r in search] == ['ok', 'ok', 'error'] * 2
  assert search[2]['error'].startswith('out of memory') and search[1]['largest_that_ran']
  assert 'stopped at batch 8' in search[1]['note'] and 'largest_that_ran' not in search[0]
  out = capsys.readouterr().out
  assert 'error: stopped at its time cap' in out and 'RESOURCE_EXHAUSTED' in out


# As on the GPU image: these packages are absent in the suite and in every worker it starts (sitecustomize
# runs in each process on PYTHONPATH; None in sys.modules: import raises, find_spec gives None).
_HIDE = "import sys\nsys.modules.update(dict.fromkeys(('tensorflow', 'tensorflow_datasets', 'clu', 'ml_collections')))\n"


# In --smoke every variant is the same narrow model, so the large group's rows would rerun the tiny rows' code: the
# test skips that group (the max search still runs hatnet_large's name through the suite) and searches one batch;
# the search's doubling and stopping are the fake workers' test above. 8 worker processes, ~3 min here.
@pytest.mark.slow
def test_smoke_run_without_tensorflow_clu_or_ml_collections(tmp_path):
  (tmp_path / 'site').mkdir()
  (tmp_path / 'site' / 'sitecustomize.py').write_text(_HIDE)
  out = tmp_path / 'rows.jsonl'
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='', PYTHONPATH=str(tmp_path / 'site'))
  check = subprocess.run([sys.executable, '-c', 'import importlib.util as u; print(u.find_spec("ml_collections"))'],
                         capture_output=True, text=True, env=env, check=True)
  assert check.stdout.strip() == 'None'  # the hiding reaches child processes
  run = subprocess.run([sys.executable, 'benchmarks/gpu_suite.py', '--smoke', '--peak_tflops=1', '--skip=large',
                        '--max_batch_limit=2', f'--json_out={out}'],
                       capture_output=True, text=True, timeout=1200, cwd=REPO_ROOT, env=env)
  assert run.returncode == 0, run.stderr[-3000:]
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  failed = [(r['group'], r['framework'], r['kind'], r.get('error')) for r in rows if r['status'] == 'error']
  assert not failed, failed
  by = {(r['group'], r['framework'], r['kind'], r['batch']): r for r in rows}
  assert not any(r['group'] == 'large' for r in rows)
  for fw in ('jax', 'torch_eager'):
    for kind in ('train', 'infer'):
      r = by[('tiny', fw, kind, 2)]
      assert r['status'] == 'ok' and r['images_per_s'] > 0 and r['peak_memory_bytes'] > 0, (fw, kind)
      assert r['gflops_per_image'] > 0 and r['mfu'] == pytest.approx(r['tflops'] / 1.0)
  assert by[('tiny', 'jax', 'train', 2)]['flops_source'] == 'xla_cpu'
  assert by[('tiny', 'torch_compile', 'train+infer', 2)]['status'] == 'skipped'
  for kind in ('host', 'bare'):
    r = by[('feed', 'jax', kind, 2)]
    assert r['status'] == 'ok' and r['images_per_s'] > 0 and r['loss'] > 0
  assert by[('feed', 'jax', 'host', 2)]['canvas'] == 64 and by[('feed', 'jax', 'host', 2)]['augment_compile_s'] > 0
  seg = by[('semfpn', 'jax', 'train', 2)]
  assert seg['image_size'] == 64 and seg['gflops_per_image'] > 0 and seg['loss'] > 0
  search = [r for r in rows if r['group'] == 'max']
  assert [(r['model'], r['batch']) for r in search] == [('hatnet_tiny', 2), ('hatnet_large', 2)]
  assert all(r['status'] == 'ok' and r['largest_that_ran'] for r in search)
  assert '--max_batch_limit 2 reached' in search[1]['note']
  assert '| group | framework | kind |' in run.stdout and 'JAX / torch_eager' in run.stdout
  assert 'host / full step on device data' in run.stdout and 'bare / full step' in run.stdout
