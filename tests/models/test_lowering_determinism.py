"""The lowered program is the same in every process: the persistent compilation cache keys on it, so a
program whose operation order depends on the process (e.g. iterating a set of parameter names, whose order
follows the hash seed) is compiled again by every new process. Checked on a scanned stage's train-style
program (forward + gradient) lowered in two processes with different hash seeds."""
import hashlib
import os
import subprocess
import sys

from tests import REPO_ROOT

_LOWER = r'''
import hashlib, jax, jax.numpy as jnp
from hatnet_jax import models
model = models.create('hatnet_tiny', num_classes=10, dims=(8, 16, 24, 32), depths=(2, 3, 2, 2), head_dim=8,
                      stem_dim=8, unroll=0, attention_impl='xla', depthwise_impl='conv', norm_impl='xla')
x = jnp.zeros((1, 32, 32, 3))
params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
loss = lambda p: model.apply(p, x).sum()
print(hashlib.sha256(jax.jit(jax.grad(loss)).lower(params).as_text().encode()).hexdigest())
'''


def _lowered_hash(seed: str) -> str:
  env = dict(os.environ, PYTHONHASHSEED=seed, JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', _LOWER], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                       timeout=300, check=True)
  return out.stdout.strip().splitlines()[-1]


def test_a_scanned_stage_lowers_to_the_same_program_in_every_process():
  hashes = {_lowered_hash(seed) for seed in ('1', '2', '3')}
  assert len(hashes) == 1, hashes
  assert len(next(iter(hashes))) == len(hashlib.sha256().hexdigest())
