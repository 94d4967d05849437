"""The package's layout rules (docs/architecture.md): imports run one way between folders, every folder says
what it holds, files stay small, and no catch-all module grows."""
import ast
import glob
import os

import pytest

from tests import REPO_ROOT

PACKAGE = os.path.join(REPO_ROOT, 'hatnet_jax')

# Folder (or top-level module) -> the other parts of hatnet_jax it may import. The order, lowest first:
# layout, models, data, metrics, visualization, (structures: box and mask ops, with detection), tasks,
# training, tools, sweep.
ALLOWED = {
    'layout': set(),
    'models': set(),
    'structures': set(),
    'data': {'layout', 'structures'},
    'metrics': {'structures'},
    'visualization': {'structures'},
    'tasks': {'layout', 'models', 'data', 'metrics', 'visualization', 'structures'},
    'training': {'layout', 'tasks', 'visualization'},
    'tools': {'layout', 'models', 'data', 'metrics', 'visualization', 'structures', 'tasks', 'training'},
    'sweep': {'training'},
}
# Inside models/: the native kernels are the bottom and import nothing else of the package.
MODELS_KERNELS_ALLOWED = {'kernels'}
CATCH_ALL = {'utils', 'util', 'common', 'helpers', 'misc'}
MAX_LINES = 400


def _python_files(*roots):
  return sorted(p for r in roots for p in glob.glob(os.path.join(REPO_ROOT, r, '**', '*.py'), recursive=True))


def _part(path: str) -> str:
  rel = os.path.relpath(path, PACKAGE).split(os.sep)
  return rel[0] if len(rel) > 1 else rel[0][:-3]


def _imported_parts(path: str):
  """(line, imported hatnet_jax sub-module path) for every import of the package in `path`, nested ones too."""
  tree = ast.parse(open(path).read(), path)
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split('.')[0] == 'hatnet_jax':
      mod = node.module.split('.')[1:]
      for alias in node.names:
        yield node.lineno, mod + [alias.name] if not mod else mod
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.split('.')[0] == 'hatnet_jax' and '.' in alias.name:
          yield node.lineno, alias.name.split('.')[1:]


def test_every_part_of_the_package_has_import_rules():
  parts = {_part(p) for p in _python_files('hatnet_jax')} - {'__init__', '__main__'}
  assert parts <= set(ALLOWED), f'add {sorted(parts - set(ALLOWED))} to ALLOWED and docs/architecture.md'


def test_imports_run_one_way_between_folders():
  wrong = []
  for path in _python_files('hatnet_jax'):
    part = _part(path)
    if part in ('__init__', '__main__'):
      continue
    for line, target in _imported_parts(path):
      if target[0] != part and target[0] not in ALLOWED[part]:
        wrong.append(f'{os.path.relpath(path, REPO_ROOT)}:{line} ({part}) imports hatnet_jax.{".".join(target)}')
  assert not wrong, 'imports against docs/architecture.md:\n' + '\n'.join(wrong)


def test_native_kernels_import_nothing_else_of_the_package():
  wrong = []
  for path in _python_files('hatnet_jax/models/kernels'):
    for line, target in _imported_parts(path):
      if target[:2] != ['models', 'kernels']:
        wrong.append(f'{os.path.relpath(path, REPO_ROOT)}:{line} imports hatnet_jax.{".".join(target)}')
  assert not wrong, '\n'.join(wrong)


def test_at_most_six_modules_at_the_top_and_every_folder_says_what_it_holds():
  top = [f for f in os.listdir(PACKAGE) if f.endswith('.py') and f not in ('__init__.py', '__main__.py')]
  assert len(top) <= 6, top
  silent = []
  for init in glob.glob(os.path.join(PACKAGE, '**', '__init__.py'), recursive=True):
    doc = ast.get_docstring(ast.parse(open(init).read()))
    if not doc or len(doc.split()) < 15:
      silent.append(os.path.relpath(init, REPO_ROOT))
  folders = {os.path.dirname(p) for p in _python_files('hatnet_jax')}
  missing = [os.path.relpath(f, REPO_ROOT) for f in folders if not os.path.exists(os.path.join(f, '__init__.py'))]
  assert not silent and not missing, f'no docstring paragraph: {silent}; no __init__.py: {missing}'


@pytest.mark.parametrize('root', ['hatnet_jax', 'benchmarks', 'configs'])
def test_no_file_over_400_lines_and_no_catch_all_module(root):
  long = []
  for path in _python_files(root):
    with open(path) as f:
      n = sum(1 for _ in f)
    if n > MAX_LINES:
      long.append(f'{os.path.relpath(path, REPO_ROOT)}: {n} lines')
    assert os.path.basename(path)[:-3] not in CATCH_ALL, f'{path}: a catch-all module; give it a home by role'
  assert not long, f'over {MAX_LINES} lines (split by role): {long}'
