"""Builds and registers the native CPU kernels (the *.cc files beside this module) as XLA FFI targets.

Each kernel is compiled on first use with the system C++ compiler (`$CXX`, else g++) against the XLA FFI
headers that jaxlib ships, for this CPU (-march=native; $HATNET_JAX_NATIVE_MARCH names another target,
e.g. x86-64-v3 for AVX2 code that runs on every newer x86 CPU), into a cache directory keyed by the
sources, the compiler and its flags, jaxlib and the CPU's flags: $HATNET_JAX_NATIVE_CACHE, else
$XDG_CACHE_HOME/hatnet_jax, else ~/.cache/hatnet_jax. Without a compiler, with HATNET_JAX_NATIVE=0, or if
the build fails, `load` returns the reason and the callers take XLA's path instead.
"""
import concurrent.futures
import functools
import glob
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time

import jax
import jaxlib

_DIR = os.path.dirname(os.path.abspath(__file__))
_FLAGS = ('-O3', '-std=c++20', '-shared', '-fPIC', '-fno-math-errno')


def _flags() -> tuple[str, ...]:
  # The kernels' vector width and register blocking follow the target (AVX-512 or AVX2, cpu_kernels.h).
  return (*_FLAGS, f'-march={os.environ.get("HATNET_JAX_NATIVE_MARCH") or "native"}')


def cache_dir() -> str:
  """Where the compiled kernels are kept (see the module docstring)."""
  if os.environ.get('HATNET_JAX_NATIVE_CACHE'):
    return os.environ['HATNET_JAX_NATIVE_CACHE']
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'hatnet_jax')


def _cpu_flags() -> str:
  """The CPU's feature flags: a library built with -march=native must not be reused on another CPU."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith(('flags', 'Features')):
          return line
  except OSError:
    pass
  return platform.processor() + platform.machine()


def _build(compiler: str, name: str) -> str:
  """Compiles `name`.cc unless the cache already holds this build; returns the library's path."""
  version = subprocess.run([compiler, '--version'], capture_output=True, text=True, check=True).stdout
  source = os.path.join(_DIR, f'{name}.cc')
  parts = []
  for path in [source, *sorted(glob.glob(os.path.join(_DIR, '*.h')))]:  # the shared header counts too
    with open(path, 'rb') as f:
      parts.append(f.read())
  key = hashlib.sha256(b'\0'.join([*parts, version.encode(), jaxlib.__version__.encode(), _cpu_flags().encode(),
                                    ' '.join(_flags()).encode()])).hexdigest()[:16]
  directory = cache_dir()
  path = os.path.join(directory, f'{name}-{key}.so')
  if os.path.exists(path):
    return path
  os.makedirs(directory, exist_ok=True)
  # Built under a temporary name and renamed: processes starting together (multi-host) never load a
  # half-written library.
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=directory)
  os.close(fd)
  try:
    cmd = [compiler, *_flags(), '-I', jax.ffi.include_dir(), '-I', _DIR, source, '-o', tmp]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
      raise RuntimeError(f'{" ".join(cmd)} failed:\n{result.stderr[-2000:]}')
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


@functools.lru_cache(maxsize=None)
def _build_all(compiler: str) -> dict[str, str | Exception]:
  """Builds every kernel source beside this module that the cache lacks, all at once (one compiler process
  each), so that a first start waits for the slowest build instead of their sum: {name: library path, or
  the exception its build raised, for that kernel's `load` to report}."""
  names = [os.path.basename(path)[:-3] for path in sorted(glob.glob(os.path.join(_DIR, '*.cc')))]

  def build(name):
    try:
      return _build(compiler, name)
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
      return e
  with concurrent.futures.ThreadPoolExecutor(max(1, len(names))) as pool:
    return dict(zip(names, pool.map(build, names)))


@functools.lru_cache(maxsize=None)
def load(name: str, targets: tuple[tuple[str, str], ...], what: str) -> str | None:
  """Builds `name`.cc, loads it and registers each (XLA target, exported symbol) once per process.

  Returns None on success, else why the kernel is unavailable (also logged as a warning, naming `what`).
  """
  if os.environ.get('HATNET_JAX_NATIVE', '1') == '0':
    return 'disabled by HATNET_JAX_NATIVE=0'
  compiler = shutil.which(os.environ.get('CXX', 'g++'))
  if compiler is None:
    return f'no C++ compiler ({os.environ.get("CXX", "g++")!r} not found; set $CXX)'
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    start = time.perf_counter()
    path = _build_all(compiler)[name]
    if isinstance(path, Exception):
      raise path
    library = ctypes.cdll.LoadLibrary(path)
    for target, symbol in targets:
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform='cpu')
  except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as e:
    logging.warning('The native %s kernel is unavailable, using XLA\'s path: %s', what, e)
    return str(e)
  logging.info('Native CPU kernel %s: %s (%.1f s to build or load)', what, path, time.perf_counter() - start)
  return None


class Kernel:
  """One kernel source (`name`.cc) with its XLA targets ((target, exported symbol) pairs): built, loaded and
  registered on first use; `what` names it in the logs and errors."""

  def __init__(self, name: str, targets: tuple[tuple[str, str], ...], what: str):
    self.name, self.targets, self.what = name, targets, what

  def unavailable_reason(self) -> str | None:
    """None once built and registered (builds on the first call), else why the kernel is unavailable."""
    return load(self.name, self.targets, self.what)

  def available(self) -> bool:
    return self.unavailable_reason() is None

  def usable(self, *arrays) -> bool:
    """Where the defaults take the kernel: the CPU backend with one device (the custom calls have no
    partitioning rule, so a batch sharded over several devices would be gathered onto one), float32
    operands, and the kernel available."""
    return (jax.default_backend() == 'cpu' and jax.device_count() == 1
            and all(a.dtype == jax.numpy.float32 for a in arrays) and self.available())

  def call(self, target: str, results, *args, **attrs):
    """jax.ffi.ffi_call of one of the targets (vmapped as a loop); RuntimeError naming why if unavailable."""
    reason = self.unavailable_reason()
    if reason is not None:
      raise RuntimeError(f'the native {self.what} kernel is unavailable: {reason}')
    return jax.ffi.ffi_call(target, results, vmap_method='sequential')(*args, **attrs)
