"""This machine's limits for roofline.py (part 1 of its docstring): the peak of a float32 matmul (JAX, and
torch.mm for reference) and the memory bandwidth of streaming kernels; and the CPU's name."""
import platform

import jax
import jax.numpy as jnp

from step_timing import best_seconds


def jax_matmul_gflops(sizes, repeats: int) -> dict[int, float]:
  """{n: GFLOP/s of a jitted float32 n x n @ n x n jnp.dot}."""
  out = {}
  for n in sizes:
    a, b = (jax.random.normal(jax.random.PRNGKey(i), (n, n), jnp.float32) for i in (0, 1))
    mm = jax.jit(jnp.dot).lower(a, b).compile()
    out[n] = 2 * n ** 3 / best_seconds(lambda: mm(a, b).block_until_ready(), repeats) / 1e9
    del a, b
  return out


def torch_matmul_gflops(sizes, repeats: int) -> tuple[dict[int, float], dict]:
  """({n: GFLOP/s of torch.mm}, facts about torch), or ({}, {}) without torch."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return {}, {}
  out = {}
  for n in sizes:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    out[n] = 2 * n ** 3 / best_seconds(lambda: torch.mm(a, b), repeats) / 1e9
  return out, dict(torch=torch.__version__, torch_threads=torch.get_num_threads())


def stream_gbs(mib: int, repeats: int) -> dict[str, float]:
  """GB/s (1e9 bytes read + written per second) of y = x * a + b in place and of a copy, on a float32
  array of `mib` MiB (rows of 1024 elements)."""
  rows = max(1, mib * 2 ** 20 // 4 // 1024)
  nbytes = rows * 1024 * 4
  scale_add = jax.jit(lambda x: x * jnp.float32(1.0001) + jnp.float32(0.5), donate_argnums=0)
  # A full-size dynamic_update_slice of the donated y: x is read, y's buffer written (a copy).
  copy = jax.jit(lambda x, y: jax.lax.dynamic_update_slice(y, x, (0, 0)), donate_argnums=1)
  holder = {'x': jnp.zeros((rows, 1024), jnp.float32), 'y': jnp.ones((rows, 1024), jnp.float32)}

  def run_scale_add():
    holder['x'] = scale_add(holder['x'])
    holder['x'].block_until_ready()

  def run_copy():
    holder['y'] = copy(holder['x'], holder['y'])
    holder['y'].block_until_ready()

  out = {'scale_add': 2 * nbytes / best_seconds(run_scale_add, repeats) / 1e9,
         'copy': 2 * nbytes / best_seconds(run_copy, repeats) / 1e9}
  del holder
  return out


def cpu_name() -> str:
  """The CPU's model name (/proc/cpuinfo), else what the platform module says."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()
