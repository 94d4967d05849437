"""SiLU -> depthwise kxk convolution -> SiLU as one native CPU kernel (silu_depthwise_silu.cc) with its VJP.

The inverted residual's middle runs on XLA's CPU backend as many full passes over the expanded map; the
C++ kernel does the forward in one read and one write and the backward in one more (BENCHMARKS.md has the
figures). It is compiled on first use with the system C++ compiler (`$CXX`, else g++) against the XLA FFI
headers that jaxlib ships, for this CPU (-march=native), into a cache directory keyed by the source, the
compiler, jaxlib and the CPU's flags: $HATNET_JAX_NATIVE_CACHE, else $XDG_CACHE_HOME/hatnet_jax, else
~/.cache/hatnet_jax. Without a compiler (or if the build fails) `available()` is False with the reason in
`unavailable_reason()`, and layers.DepthwiseConv's 'auto' takes XLA's path instead.
"""
import functools
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
import jax.numpy as jnp

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'silu_depthwise_silu.cc')
_FWD, _BWD = 'hatnet_silu_depthwise_silu_fwd', 'hatnet_silu_depthwise_silu_bwd'
_FLAGS = ('-O3', '-march=native', '-std=c++20', '-shared', '-fPIC', '-fno-math-errno')


def cache_dir() -> str:
  """Where the compiled kernel is kept (see the module docstring)."""
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


def _build(compiler: str) -> str:
  """Compiles the kernel unless the cache already holds this build; returns the library's path."""
  version = subprocess.run([compiler, '--version'], capture_output=True, text=True, check=True).stdout
  with open(_SOURCE, 'rb') as f:
    source = f.read()
  key = hashlib.sha256(b'\0'.join([source, version.encode(), jaxlib.__version__.encode(), _cpu_flags().encode(),
                                    ' '.join(_FLAGS).encode()])).hexdigest()[:16]
  directory = cache_dir()
  path = os.path.join(directory, f'silu_depthwise_silu-{key}.so')
  if os.path.exists(path):
    return path
  os.makedirs(directory, exist_ok=True)
  # Built under a temporary name and renamed: processes starting together (multi-host) never load a
  # half-written library.
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=directory)
  os.close(fd)
  try:
    cmd = [compiler, *_FLAGS, '-I', jax.ffi.include_dir(), _SOURCE, '-o', tmp]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
      raise RuntimeError(f'{" ".join(cmd)} failed:\n{result.stderr[-2000:]}')
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


@functools.lru_cache(maxsize=None)
def _load() -> str | None:
  """Builds, loads and registers the kernel once per process; None on success, else why it is unavailable."""
  if os.environ.get('HATNET_JAX_NATIVE', '1') == '0':
    return 'disabled by HATNET_JAX_NATIVE=0'
  compiler = shutil.which(os.environ.get('CXX', 'g++'))
  if compiler is None:
    return f'no C++ compiler ({os.environ.get("CXX", "g++")!r} not found; set $CXX)'
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    start = time.perf_counter()
    path = _build(compiler)
    library = ctypes.cdll.LoadLibrary(path)
    for name, symbol in ((_FWD, library.HatnetSiluDepthwiseSiluFwd), (_BWD, library.HatnetSiluDepthwiseSiluBwd)):
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform='cpu')
  except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as e:
    logging.warning('The native SiLU-depthwise-SiLU kernel is unavailable, using XLA\'s path: %s', e)
    return str(e)
  logging.info('Native CPU kernel SiLU -> depthwise -> SiLU: %s (%.1f s to build or load)', path,
               time.perf_counter() - start)
  return None


def available() -> bool:
  """Whether the native kernel is built and registered (builds it on the first call)."""
  return _load() is None


def unavailable_reason() -> str | None:
  return _load()


MAX_KERNEL_SIZE = 7  # kMaxK of the C++ source


def usable(x, kernel_size: int) -> bool:
  """Whether 'auto' takes the kernel for `x`: CPU backend, one device (the custom call has no partitioning
  rule, so a batch sharded over several devices would be gathered), float32, an odd kernel size of at most
  MAX_KERNEL_SIZE, and the kernel available."""
  return (jax.default_backend() == 'cpu' and jax.device_count() == 1 and x.dtype == jnp.float32
          and x.ndim == 4 and kernel_size % 2 == 1 and kernel_size <= MAX_KERNEL_SIZE and available())


@jax.custom_vjp
def silu_depthwise_silu(x, kernel):
  """SiLU(depthwise_kxk(SiLU(x), kernel)) of a float32 NHWC map, kernel (k, k, C), k odd, same padding."""
  reason = _load()
  if reason is not None:
    raise RuntimeError(f'the native SiLU-depthwise-SiLU kernel is unavailable: {reason}')
  return jax.ffi.ffi_call(_FWD, jax.ShapeDtypeStruct(x.shape, x.dtype), vmap_method='sequential')(x, kernel)


def _fwd(x, kernel):
  return silu_depthwise_silu(x, kernel), (x, kernel)


def _bwd(res, g):
  x, kernel = res
  out = (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(kernel.shape, kernel.dtype))
  return tuple(jax.ffi.ffi_call(_BWD, out, vmap_method='sequential')(x, kernel, g.astype(x.dtype)))


silu_depthwise_silu.defvjp(_fwd, _bwd)
