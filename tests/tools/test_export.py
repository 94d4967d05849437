"""hatnet_jax.tools.export: a jax.export module with a symbolic batch, loaded in a fresh process with only jax."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from hatnet_jax.tools import export
from tests.tools import common

_LOADER = '''
import sys
import jax, numpy as np
exported = jax.export.deserialize(open(sys.argv[1], 'rb').read())
for n in (1, 7):
  x = np.load(sys.argv[2] + f'/x{n}.npy')
  np.save(sys.argv[2] + f'/y{n}.npy', np.asarray(exported.call(x)))
assert not any(m.split('.')[0] in ('flax', 'hatnet_jax', 'tensorflow', 'torch') for m in sys.modules), 'extra imports'
print('in_shape', exported.in_avals[0].shape)
'''


@pytest.mark.slow  # ~2 min here: two exports, a fresh process; test_predict covers the loading path
def test_export_round_trip(tmp_path, capsys):
  model = common.small_model()
  variables = common.save_weights(str(tmp_path / 'weights'), model)
  out = tmp_path / 'export' / 'model.jax'
  rc = export.main([f'--weights={tmp_path / "weights"}', f'--model_overrides={common.OVERRIDES_JSON}',
                    '--image_size=64', f'--output={out}'])
  assert rc == 0, capsys.readouterr().err
  meta = json.loads(open(str(out) + '.json').read())
  assert meta['input_shape'] == ['b', 64, 64, 3] and meta['layout'] == 'NHWC'
  assert meta['num_classes'] == common.NUM_CLASSES and meta['model'] == 'hatnet_tiny'
  assert meta['mean'] == [0.485, 0.456, 0.406] and meta['std'] == [0.229, 0.224, 0.225]
  assert len(meta['class_names']) == common.NUM_CLASSES
  rng = np.random.default_rng(0)
  for n in (1, 7):
    np.save(tmp_path / f'x{n}.npy', rng.standard_normal((n, 64, 64, 3)).astype(np.float32))
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env['JAX_PLATFORMS'] = 'cpu'
  proc = subprocess.run([sys.executable, '-c', _LOADER, str(out), str(tmp_path)], cwd=str(tmp_path), env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'in_shape (b, 64, 64, 3)' in proc.stdout
  for n in (1, 7):
    want = np.asarray(model.apply(variables, np.load(tmp_path / f'x{n}.npy'), train=False))
    got = np.load(tmp_path / f'y{n}.npy')
    assert got.shape == (n, common.NUM_CLASSES)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
