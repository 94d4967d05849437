"""Host memory of the XLA CPU backend: large blocks on transparent huge pages (on by default in main.py).

XLA's CPU runtime allocates the temporaries of each execution as one block (about 4 GB for the hatnet_tiny
train step at batch 16) and frees it when the step ends. glibc serves a block that large with a fresh mmap
and returns it with munmap, so every step faults the whole block in again 4 KiB at a time: about a million
page faults, 2.2-2.5 s of kernel time per 5 s step on a 2-core machine. glibc's tunable
`glibc.malloc.hugetlb=1` makes malloc advise the kernel to back its mappings with transparent huge pages
(madvise MADV_HUGEPAGE): 2 MiB per fault, a 512th of the faults, while freed memory still goes back to the
system, so the peak and resting memory stay those of glibc's default (hatnet_tiny train step: 3.6 s
instead of 6.0-6.5 s, peak RSS 7.2 GB in both; figures in BENCHMARKS.md).

glibc reads tunables once, when a process starts, so `reexec_with_huge_pages()` starts the program again
in the same process (execve: same pid, same arguments and interpreter options) with the tunable added to
GLIBC_TUNABLES; main.py and the benchmarks call it first thing. Elsewhere (a notebook, pytest) start Python
with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` to get the same.

It applies where it helps: Linux with glibc 2.35+, the kernel's transparent huge pages in `madvise` mode
(in `always` every large mapping gets them already; in `never` there are none), and the CPU as the JAX
backend (on GPU/TPU hosts device memory is not malloc'd).

Tried and not kept: mallopt settings that keep freed memory in the heap (one arena, no mmap, no trim)
avoid the faults as well, but the kept heap fragments: a train step after an evaluation no longer fit the
freed block, and hatnet_tiny's resident memory grew from 7.0 to 12.7 GB within three rounds.

`release_freed_memory()` is the other half, for the compiler: XLA's compilation frees ~1 GB of small
blocks that glibc keeps mapped (hatnet_tiny's train step: 0.27 GiB resident before compiling, 1.6 GiB
after); `malloc_trim(0)` hands them back in ~0.1 s. The trainer calls it after compiling its steps, so
that the steps' temporaries do not come on top of the compiler's leftovers.
"""
import ctypes
import importlib.metadata
import importlib.util
import os
import sys

TUNABLE = 'glibc.malloc.hugetlb=1'
THP_MODE_FILE = '/sys/kernel/mm/transparent_hugepage/enabled'
_ACCELERATOR_MODULES = ('jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm60_plugin', 'jax_rocm7_plugin',
                        'libtpu')


def _cpu_is_the_backend() -> bool:
  platforms = os.environ.get('JAX_PLATFORMS', '')
  if platforms:
    return platforms.split(',')[0].strip() == 'cpu'
  if any(importlib.util.find_spec(m) is not None for m in _ACCELERATOR_MODULES):
    return False
  return not importlib.metadata.entry_points(group='jax_plugins')


def _glibc_version() -> tuple[int, ...] | None:
  try:
    name, version = os.confstr('CS_GNU_LIBC_VERSION').split()  # 'glibc 2.36'
  except (ValueError, OSError, AttributeError):
    return None
  return tuple(int(p) for p in version.split('.')[:2]) if name == 'glibc' else None


def _thp_mode(path: str = THP_MODE_FILE) -> str:
  """The kernel's transparent huge page mode: the bracketed word of 'always [madvise] never', or 'absent'."""
  try:
    with open(path) as f:
      words = f.read().split()
  except OSError:
    return 'absent'
  return next((w[1:-1] for w in words if w.startswith('[')), 'absent')


def in_effect() -> bool:
  """Whether this process was started with the tunable (glibc read it then)."""
  return TUNABLE in os.environ.get('GLIBC_TUNABLES', '').split(':')


def why_not(thp_mode_file: str = THP_MODE_FILE) -> str | None:
  """Why the tunable would not help here, or None where it would."""
  if not sys.platform.startswith('linux'):
    return 'not Linux'
  version = _glibc_version()
  if version is None or version < (2, 35):
    return 'needs glibc 2.35 or newer'
  mode = _thp_mode(thp_mode_file)
  if mode == 'always':
    return "the kernel gives every large mapping huge pages already (transparent_hugepage 'always')"
  if mode != 'madvise':
    return f"the kernel's transparent huge pages are {mode!r}"
  if not _cpu_is_the_backend():
    return 'an accelerator backend is installed or selected'
  return None


def reexec_with_huge_pages() -> tuple[bool, str]:
  """Restarts this program with glibc's huge-page tunable, unless already started so or it would not help.

  Does not return when it restarts; otherwise (in effect, reason) for the log. Call it before anything
  worth keeping has happened (it starts over, in the same process).
  """
  if in_effect():
    return True, f'large blocks on transparent huge pages (GLIBC_TUNABLES={TUNABLE})'
  reason = why_not()
  if reason is not None:
    return False, reason
  env = dict(os.environ)
  env['GLIBC_TUNABLES'] = ':'.join(t for t in (env.get('GLIBC_TUNABLES', ''), TUNABLE) if t)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, env)
  raise AssertionError('unreachable: execve returns only by raising')


def release_freed_memory() -> bool:
  """Returns the heap's freed memory to the system (glibc's malloc_trim(0)); False where there is no glibc."""
  if _glibc_version() is None:
    return False
  try:
    ctypes.CDLL(None).malloc_trim(0)
  except (OSError, AttributeError):
    return False
  return True
