"""pyproject.toml: the core install is the model alone (jax, flax, numpy); extras for training, the demo,
the converter, the tests and accelerators. The fresh-venv check (slow) installs the core for real."""
import os
import re
import subprocess
import sys
import tomllib

import pytest

from tests import REPO_ROOT  # noqa: E402

ROOT = REPO_ROOT
_CORE_CHECK = '''
import importlib.util, sys
import jax, jax.numpy as jnp
from hatnet_jax import models
for mod in ('tensorflow', 'torch'):
  assert importlib.util.find_spec(mod) is None, mod + ' is installed'
model = models.create('hatnet_tiny', num_classes=1000)
x = jnp.zeros((2, 64, 64, 3))
y = model.apply(model.init(jax.random.key(0), x), x)
assert y.shape == (2, 1000), y.shape
from hatnet_jax.models.kernels import fused_attention, fused_depthwise, fused_group_norm  # C++ sources ship in the package
for kernel in (fused_depthwise, fused_attention, fused_group_norm):
  assert kernel.available(), kernel.unavailable_reason()
print('core ok')
'''


def _project():
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    return tomllib.load(f)['project']


def _name(req):
  return re.split(r'[<>=!~\[; ]', req, maxsplit=1)[0].lower().replace('_', '-')


def _extra(project, extra, seen=None):
  """The requirement names of an extra, self-references ("hatnet-jax[train]") expanded."""
  seen = set() if seen is None else seen
  out = set()
  for req in project['optional-dependencies'][extra]:
    if _name(req) == 'hatnet-jax':
      for sub in re.search(r'\[(.*)\]', req).group(1).split(','):
        if sub not in seen:
          seen.add(sub)
          out |= _extra(project, sub.strip(), seen)
    else:
      out.add(_name(req))
  return out


def test_dependencies():
  p = _project()
  assert p['name'] == 'hatnet-jax' and p['requires-python'] == '>=3.11'
  assert {_name(r) for r in p['dependencies']} == {'jax', 'flax', 'numpy'}
  train = _extra(p, 'train')
  assert {'optax', 'orbax-checkpoint', 'tensorflow-cpu', 'tensorflow-datasets', 'clu', 'pillow'} <= train
  assert 'torch' not in _extra(p, 'demo') and 'scikit-learn' in _extra(p, 'demo')
  assert {'torch', 'pytest', 'scikit-learn', 'tensorflow-cpu'} <= _extra(p, 'test')
  assert p['optional-dependencies']['cuda12'] == ['jax[cuda12]'] and p['optional-dependencies']['tpu'] == ['jax[tpu]']
  # requirements.txt: the package with the test extra, plus pins of what the tests ran with.
  lines = [l.split('#')[0].strip() for l in open(os.path.join(ROOT, 'requirements.txt'))]
  assert '-e .[test]' in lines
  # The README's demo install does not pull torch.
  readme = open(os.path.join(ROOT, 'README.md')).read()
  assert 'pip install -e ".[demo]" && python main.py --config=configs/digits.py' in readme


def test_console_scripts_name_the_tools_main_functions():
  """Each hatnet-* script in pyproject points at a callable of a module that exists and answers --help in a
  subprocess, as `hatnet-NAME --help` would (argparse exits 0; absl's --help, the sweep's, exits 1)."""
  scripts = tomllib.load(open(os.path.join(ROOT, 'pyproject.toml'), 'rb'))['project']['scripts']
  assert {'hatnet-predict', 'hatnet-attention', 'hatnet-export', 'hatnet-convert', 'hatnet-prepare-data',
          'hatnet-sweep'} <= set(scripts)
  for name, target in scripts.items():
    module, _, func = target.partition(':')
    code = (f'import sys; from {module} import {func} as f; sys.argv = [{name!r}, "--help"]; '
            f'f() if "sweep" in {module!r} else sys.exit(f(["--help"]))')
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == (1 if 'sweep' in module else 0), (name, proc.stderr[-2000:])
    assert 'usage' in (proc.stdout + proc.stderr).lower(), (name, proc.stdout[-2000:])


def test_models_import_without_tensorflow_torch_optax():
  code = ('import sys; import hatnet_jax.models, hatnet_jax.tools.attention_maps, hatnet_jax.tools.inference; '
          'bad = [m for m in ("tensorflow", "torch", "optax", "orbax", "sklearn") if m in sys.modules]; '
          'assert not bad, bad; print("ok")')
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and 'ok' in proc.stdout, proc.stderr[-2000:]


@pytest.mark.slow
def test_fresh_venv_core_install(tmp_path):
  """python -m venv (no system site packages) + pip install ROOT: the model runs; tensorflow/torch absent."""
  venv = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True, timeout=300)
  py = str(venv / 'bin' / 'python')
  env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'XLA_FLAGS')}
  pip = subprocess.run([py, '-m', 'pip', 'install', ROOT], capture_output=True, text=True, timeout=1800, env=env)
  assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
  proc = subprocess.run([py, '-c', _CORE_CHECK], cwd=str(tmp_path), capture_output=True, text=True, timeout=600,
                        env=env)
  assert proc.returncode == 0 and 'core ok' in proc.stdout, proc.stderr[-3000:]
