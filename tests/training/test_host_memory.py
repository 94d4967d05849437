"""hatnet_jax.training.host_memory: XLA CPU temporaries faulted in as huge pages; when it restarts and when it does not."""
import json
import os
import subprocess
import sys

import pytest

from hatnet_jax.training import host_memory

from tests import REPO_ROOT  # noqa: E402

ROOT = REPO_ROOT

# Restarts itself with the tunable (argv[1] == 'huge') as main.py does, then takes 8 gradient steps of a small
# HAT-Net whose temporaries (~250 MB, far above glibc's mmap threshold) XLA allocates and frees at each
# execution; reports the minor page faults of each step and the restarts seen.
_PROBE = r'''
import json, os, resource, sys
from hatnet_jax.training import host_memory
os.environ['PROBE_STARTS'] = str(int(os.environ.get('PROBE_STARTS', '0')) + 1)
state = host_memory.reexec_with_huge_pages() if sys.argv[1] == 'huge' else (False, 'off')
import jax, jax.numpy as jnp
from hatnet_jax import models
model = models.create('hatnet_tiny', num_classes=10)
x = jnp.ones((4, 112, 112, 3))
params = model.init(jax.random.key(0), x[:1])['params']
step = jax.jit(jax.grad(lambda p, x: model.apply({'params': p}, x).sum()))
faults = []
for _ in range(8):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  jax.block_until_ready(step(params, x))
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({'state': state, 'faults': faults, 'starts': int(os.environ['PROBE_STARTS']),
                  'tunables': os.environ.get('GLIBC_TUNABLES')}))
'''


def _probe(mode, **env):
  out = subprocess.run([sys.executable, '-c', _PROBE, mode], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='', PYTHONPATH=ROOT, **env))
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # two processes compile a HAT-Net gradient step (~2 min)
@pytest.mark.skipif(host_memory.why_not() is not None, reason=f'no effect here: {host_memory.why_not()}')
def test_huge_pages_cut_the_page_faults_of_each_step():
  env = {'GLIBC_TUNABLES': 'glibc.malloc.check=0'}  # a tunable of the user's own is kept beside ours
  huge, default = _probe('huge', **env), _probe('off', **env)
  assert huge['state'] == [True, 'large blocks on transparent huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1)']
  assert huge['starts'] == 2 and default['starts'] == 1  # restarted once, not in a loop
  assert huge['tunables'] == 'glibc.malloc.check=0:glibc.malloc.hugetlb=1'
  # glibc's default hands the temporaries back after each step: every step faults them in again (~23k 4 KiB
  # pages here). On huge pages each fault brings 2 MiB, where the kernel has a free one: how many it has varies
  # with the machine's fragmentation (a step's faults on huge pages: 0.5k-12k, here and in CI alike), so the
  # bound is on the sum of steps 3-8 and asks for half: here 14k against 143k (CI's failed run: median 6.9k / 23.4k).
  steady = lambda r: sum(r['faults'][2:])
  assert min(default['faults'][2:]) > 15_000, default
  assert steady(huge) < steady(default) // 2, (huge, default)


def _fake_thp(tmp_path, text):
  path = tmp_path / text.split('[')[1].split(']')[0]
  path.write_text(text)
  return str(path)


def test_applies_only_where_huge_pages_are_advised_and_the_cpu_is_the_backend(monkeypatch, tmp_path):
  monkeypatch.setattr(sys, 'platform', 'linux')
  monkeypatch.setattr(host_memory, '_glibc_version', lambda: (2, 36))
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  madvise = _fake_thp(tmp_path, 'always [madvise] never\n')
  assert host_memory.why_not(madvise) is None
  assert 'already' in host_memory.why_not(_fake_thp(tmp_path, '[always] madvise never\n'))
  assert host_memory.why_not(_fake_thp(tmp_path, 'always madvise [never]\n')) == \
      "the kernel's transparent huge pages are 'never'"
  assert host_memory.why_not(str(tmp_path / 'missing')) == "the kernel's transparent huge pages are 'absent'"
  monkeypatch.setenv('JAX_PLATFORMS', 'cuda')
  assert host_memory.why_not(madvise) == 'an accelerator backend is installed or selected'
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setattr(host_memory, '_glibc_version', lambda: (2, 31))
  assert host_memory.why_not(madvise) == 'needs glibc 2.35 or newer'


def test_restarts_once_with_the_tunable_added(monkeypatch):
  calls = []
  monkeypatch.setattr(host_memory, 'why_not', lambda: None)
  monkeypatch.setattr(os, 'execve', lambda *a: calls.append(a) or (_ for _ in ()).throw(SystemExit(0)))
  monkeypatch.setattr(sys, 'orig_argv', ['python', '-u', 'main.py', '--workdir=w'])
  monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.malloc.check=0')
  with pytest.raises(SystemExit):
    host_memory.reexec_with_huge_pages()
  (executable, argv, env), = calls
  assert executable == sys.executable and argv == ['python', '-u', 'main.py', '--workdir=w']
  assert env['GLIBC_TUNABLES'] == 'glibc.malloc.check=0:glibc.malloc.hugetlb=1'
  monkeypatch.setenv('GLIBC_TUNABLES', env['GLIBC_TUNABLES'])  # the restarted process: in effect, no restart
  assert host_memory.reexec_with_huge_pages()[0] and len(calls) == 1
  monkeypatch.delenv('GLIBC_TUNABLES')
  monkeypatch.setattr(host_memory, 'why_not', lambda: 'not Linux')  # nothing to gain: no restart
  assert host_memory.reexec_with_huge_pages() == (False, 'not Linux') and len(calls) == 1


# Frees 256 MB of 4 KiB blocks below a block that stays allocated (glibc trims only the top of its heap by
# itself), then asks for the freed pages back; reports the resident MB at each point.
_TRIM_PROBE = r'''
import ctypes, json, os
from hatnet_jax.training import host_memory
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss_mb():
  return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20
blocks = [libc.malloc(4096) for _ in range(65536)]
for b in blocks:
  ctypes.memset(b, 1, 4096)
pin = libc.malloc(4096)
allocated = rss_mb()
for b in blocks:
  libc.free(b)
freed = rss_mb()
released = host_memory.release_freed_memory()
print(json.dumps({'allocated': allocated, 'freed': freed, 'trimmed': rss_mb(), 'released': released}))
'''


@pytest.mark.skipif(host_memory._glibc_version() is None or not sys.platform.startswith('linux'),
                    reason='malloc_trim is glibc on Linux')
def test_release_freed_memory_hands_the_freed_heap_back():
  out = subprocess.run([sys.executable, '-c', _TRIM_PROBE], capture_output=True, text=True, check=True, cwd=ROOT,
                       env={**os.environ, 'GLIBC_TUNABLES': ''})
  r = json.loads(out.stdout.strip().splitlines()[-1])
  assert r['released']
  assert r['freed'] > r['allocated'] - 64, r  # glibc kept the freed blocks mapped
  assert r['trimmed'] < r['freed'] - 192, r  # and gave back most of the 256 MB
