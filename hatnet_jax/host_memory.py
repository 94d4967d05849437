"""Host memory of the XLA CPU backend (opt-in): keep freed memory in the process instead of handing it back.

XLA's CPU runtime allocates the temporaries of each execution as one block (about 4 GB for the hatnet_tiny
train step at batch 16) with posix_memalign and frees it when the step ends. glibc serves blocks that large
with mmap and returns them with munmap, so every step page-faults the whole block in again: about a million
4 KiB faults, 2.2-2.5 s of kernel time per 5 s step on a 2-core machine. `keep_freed_memory()` sets glibc
(mallopt) to serve every allocation from the main heap (one arena, no mmap) and never to trim it, so the
block freed by one step is reused by the next without a fault. What is freed is kept for reuse rather than
returned to the system, which is why it is opt-in (config.cpu_keep_freed_memory): the kept heap also holds
what the compiler freed (hatnet_small's peak RSS: 10.5 -> 18.7 GB).

Kept memory can fragment: a small allocation landing in a freed block, or two programs with blocks of
different sizes taking turns (train and eval steps), makes the next execution take a new block, and the
process grows (a benchmark alternating two steps of hatnet_medium grew past 24 GB). `trim()` (malloc_trim)
hands every free page back; `RssGuard` calls it when the resident memory has grown by more than a quarter
since its first check. The trainer checks it at every step and trims after each evaluation, so growth is
bounded and costs one page-faulting step where it happens.

It must run before JAX starts its CPU client (threads pick their malloc arena when they first allocate),
so main.py and the benchmarks call it first; called later, it does nothing and says why. It applies only
where the CPU is the backend (JAX_PLATFORMS=cpu, or no accelerator plugin installed): on GPU/TPU hosts the
device memory is not malloc'd, and a single arena would only serialise the input pipeline's threads.
"""
import ctypes
import ctypes.util
import functools
import importlib.metadata
import importlib.util
import os
import sys

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_applied = False
_ACCELERATOR_MODULES = ('jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm60_plugin', 'jax_rocm7_plugin',
                        'libtpu')


@functools.lru_cache(maxsize=None)
def _libc() -> ctypes.CDLL:
  return ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')


def _cpu_is_the_backend() -> bool:
  platforms = os.environ.get('JAX_PLATFORMS', '')
  if platforms:
    return platforms.split(',')[0].strip() == 'cpu'
  if any(importlib.util.find_spec(m) is not None for m in _ACCELERATOR_MODULES):
    return False
  return not importlib.metadata.entry_points(group='jax_plugins')


def keep_freed_memory() -> tuple[bool, str]:
  """Applies the glibc settings of the module docstring; (applied, why) for the log."""
  if not sys.platform.startswith('linux'):
    return False, 'not Linux (glibc)'
  if 'jax' in sys.modules:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    if xla_bridge.backends_are_initialized():
      return False, 'JAX had already started its backend'
  if not _cpu_is_the_backend():
    return False, 'an accelerator backend is installed or selected'
  try:
    mallopt = _libc().mallopt
  except (OSError, AttributeError):
    return False, 'no glibc mallopt'
  # 0 means failure. Trim threshold -1 is read as the largest size: never trim.
  ok = all(mallopt(p, v) for p, v in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))
  global _applied
  _applied = ok
  return ok, 'one malloc arena, no mmap, no trimming' if ok else 'mallopt refused a setting'


def applied() -> bool:
  """Whether `keep_freed_memory` took effect in this process."""
  return _applied


def trim() -> None:
  """Returns all free heap pages to the system (malloc_trim), where `keep_freed_memory` was applied."""
  if _applied:
    _libc().malloc_trim(0)


def _rss_bytes() -> int:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


class RssGuard:
  """`check()` after each step: trims when the resident memory exceeds (1 + slack) x that of the first check."""

  def __init__(self, slack: float = 0.25):
    self.slack, self.base, self.trims = slack, None, 0

  def check(self) -> bool:
    """Whether it trimmed now. Does nothing unless `keep_freed_memory` was applied."""
    if not _applied:
      return False
    rss = _rss_bytes()
    if self.base is None:
      self.base = rss
    elif rss > (1 + self.slack) * self.base:
      trim()
      self.trims += 1
      return True
    return False
