"""hatnet_jax.host_memory: XLA CPU temporaries are reused without page faults; the guards around it."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Takes 8 gradient steps of a small HAT-Net whose temporaries (~250 MB, far above glibc's mmap threshold) are
# allocated and freed by XLA at each execution; reports the minor page faults of each step.
_PROBE = r'''
import json, resource, sys
from hatnet_jax import host_memory
applied = host_memory.keep_freed_memory() if sys.argv[1] == 'keep' else (False, 'off')
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
host_memory.trim()
print(json.dumps({'applied': applied, 'faults': faults, 'late': host_memory.keep_freed_memory()}))
'''


def _probe(mode):
  out = subprocess.run([sys.executable, '-c', _PROBE, mode], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='', PYTHONPATH=ROOT))
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # two processes compile a HAT-Net gradient step (~2 min)
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc only')
def test_freed_temporaries_are_reused_without_page_faults():
  kept, default = _probe('keep'), _probe('off')
  assert kept['applied'] == [True, 'one malloc arena, no mmap, no trimming']
  # glibc's default hands the temporaries back after each step: every step faults them in again (~60k 4 KiB
  # pages here). Kept, the steady state is (nearly) no faults; a step may still take a new block now and then.
  steady = lambda r: sorted(r['faults'][2:])[len(r['faults'][2:]) // 2]  # median of steps 3-8
  assert steady(default) > 20_000, default
  assert steady(kept) < steady(default) // 10, (kept, default)
  # Once JAX has started its backend it is too late (threads have their arenas): it says so and does nothing.
  assert kept['late'] == [False, 'JAX had already started its backend']


def test_not_applied_where_an_accelerator_is_selected(monkeypatch):
  from hatnet_jax import host_memory
  monkeypatch.setenv('JAX_PLATFORMS', 'cuda')
  monkeypatch.delitem(sys.modules, 'jax', raising=False)  # as in a fresh process: JAX not yet imported
  assert host_memory.keep_freed_memory() == (False, 'an accelerator backend is installed or selected')


def test_guard_trims_when_resident_memory_grows_past_the_slack(monkeypatch):
  from hatnet_jax import host_memory
  rss, trims = [10_000], []
  monkeypatch.setattr(host_memory, '_applied', True)
  monkeypatch.setattr(host_memory, '_rss_bytes', lambda: rss[0])
  monkeypatch.setattr(host_memory, 'trim', lambda: trims.append(rss[0]))
  guard = host_memory.RssGuard(slack=0.25)
  for value in (10_000, 12_000, 12_500, 12_600, 9_000, 20_000):  # the first check sets the base
    rss[0] = value
    guard.check()
  assert trims == [12_600, 20_000] and guard.trims == 2
  monkeypatch.setattr(host_memory, '_applied', False)  # glibc's default: nothing to guard
  rss[0] = 10 ** 9
  assert not host_memory.RssGuard().check() and len(trims) == 2
