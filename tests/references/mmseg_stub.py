"""Import stubs for `mmcv.ops`, so that mmsegmentation 1.x imports on top of mmcv-lite.

Why: the parity tests (tests/data/segmentation/test_mmseg_parity.py) run the real mmsegmentation 1.2.2
transforms and `IoUMetric`, which are pure Python / NumPy / OpenCV. mmcv-lite ships mmcv without its
compiled extension (`mmcv._ext`), and every module under `mmcv.ops` loads that extension when imported.
mmseg imports `mmcv.ops` at module level in places the tests never exercise (e.g.
`mmseg/utils/mask_classification.py`: `from mmcv.ops import point_sample`, reached from
`mmseg.datasets.transforms` through `mmseg.utils`), so without a stub `import mmseg.datasets` fails with
`ModuleNotFoundError: No module named 'mmcv._ext'`.

What: `install()` puts a meta-path finder first on `sys.meta_path` that answers for `mmcv.ops` and every
`mmcv.ops.*` submodule with an empty package module. Any public attribute of such a module is a dummy
class named after it, so `from mmcv.ops import X` and subclassing `X` work; calling or instantiating it
raises RuntimeError (a compiled op is never silently replaced). Dunder lookups raise AttributeError as
usual, so importlib and inspection behave. Nothing else is stubbed.

It is installed only where the compiled extension is absent (`mmcv._ext` not importable): with a full mmcv
the real ops load. Call `install()` before importing mmseg; it is idempotent.
"""
import importlib.abc
import importlib.util
import sys
import types

PACKAGE = 'mmcv.ops'


def _dummy(qualname):
  """A class standing for the compiled op `qualname`: importable, subclassable, never runnable."""

  def unavailable(*args, **kwargs):
    del args, kwargs
    raise RuntimeError(f'{qualname} is a compiled mmcv op: stubbed by tests/references/mmseg_stub.py '
                       '(mmcv-lite has no mmcv._ext)')

  return type(qualname.rsplit('.', 1)[-1], (), {'__init__': unavailable, '__call__': unavailable,
                                                '__module__': qualname.rsplit('.', 1)[0]})


class StubModule(types.ModuleType):
  """`mmcv.ops` or one of its submodules: attributes are created on first access."""

  def __getattr__(self, name):
    if name.startswith('__') and name.endswith('__'):
      raise AttributeError(name)
    value = _dummy(f'{self.__name__}.{name}')
    setattr(self, name, value)
    return value


class OpsStubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Finds `mmcv.ops` and `mmcv.ops.*` before the path finder does, and loads them as `StubModule`s."""

  def find_spec(self, fullname, path=None, target=None):
    del path, target
    if fullname == PACKAGE or fullname.startswith(PACKAGE + '.'):
      return importlib.util.spec_from_loader(fullname, self, is_package=True)
    return None

  def create_module(self, spec):
    module = StubModule(spec.name)
    module.__path__ = []  # a package: `import mmcv.ops.nms` goes through find_spec again
    return module

  def exec_module(self, module):
    del module


def needed():
  """True when mmcv is installed without its compiled extension (mmcv-lite)."""
  if importlib.util.find_spec('mmcv') is None:
    return False
  try:
    return importlib.util.find_spec('mmcv._ext') is None
  except (ImportError, ValueError):
    return True


def install():
  """Installs the finder (first on sys.meta_path) when `needed()`; returns whether it is installed."""
  if any(isinstance(f, OpsStubFinder) for f in sys.meta_path):
    return True
  if not needed():
    return False
  for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + '.')]:
    del sys.modules[name]  # a half-imported real mmcv.ops from an earlier failed import
  sys.meta_path.insert(0, OpsStubFinder())
  return True
