"""How arrays are laid out over the devices: the 1-D 'data' mesh, batch and train-state shardings.

A 1-D Mesh over all devices of all processes with axis 'data'. The batch is split over 'data';
parameters, optimizer state and EMA are replicated, or (config.shard_params) split FSDP-style over the
same axis. Each process feeds the contiguous rows of every global batch that its devices hold.
"""
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

if TYPE_CHECKING:  # only for annotations: the GPU machine's image has no ml_collections
  import ml_collections

DATA_AXIS = 'data'


def create_mesh(devices=None) -> Mesh:
  """A 1-D mesh with axis 'data' over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def state_shardings(abstract_state: Any, mesh: Mesh, config: 'ml_collections.ConfigDict') -> Any:
  """Replicated everywhere, or (config.shard_params) each array of at least shard_params_min_size
  elements split along its largest dimension divisible by the device count."""
  replicated = NamedSharding(mesh, P())

  def leaf(x):
    if not config.shard_params or x.ndim == 0 or x.size < config.shard_params_min_size:
      return replicated
    for dim in sorted(range(x.ndim), key=lambda d: -x.shape[d]):
      if x.shape[dim] % mesh.size == 0:
        spec = [None] * x.ndim
        spec[dim] = DATA_AXIS
        return NamedSharding(mesh, P(*spec))
    return replicated

  return jax.tree.map(leaf, abstract_state)


def check_batch_size(batch_size: int, num_devices: int, *, what: str = 'config.batch_size', accum: int = 1):
  """Raises ValueError unless `batch_size` (global) splits evenly over the devices (and microbatches)."""
  per_step = num_devices * accum
  if batch_size <= 0 or batch_size % per_step:
    extra = f' x config.grad_accum_steps ({accum}) = {per_step}' if accum > 1 else ''
    raise ValueError(f'{what}={batch_size} (global) must be a positive multiple of the device count '
                     f'({num_devices}, all processes){extra}: every device gets the same number of examples')


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Batch-major arrays split over the 'data' axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def process_rows(sharding, global_batch):
  """[lo, hi): the rows of each global batch that this process's devices hold."""
  spans = set()
  for index in sharding.addressable_devices_indices_map((global_batch,)).values():
    s = index[0]
    spans.add((s.start or 0, global_batch if s.stop is None else s.stop))
  spans = sorted(spans)
  lo, hi = spans[0][0], spans[0][1]
  for a, b in spans[1:]:
    if a > hi:
      raise ValueError(f'This process holds non-contiguous batch rows {spans}; use a mesh whose '
                       f"'data' axis is laid out process by process")
    hi = max(hi, b)
  return lo, hi


def batch_rows(mesh: Mesh, batch_size: int, *, what: str = 'config.batch_size') -> tuple[NamedSharding, int, int]:
  """(batch sharding, lo, hi): checks that the global `batch_size` splits over the mesh, and gives the rows
  [lo, hi) of every global batch that this process feeds."""
  check_batch_size(batch_size, mesh.size, what=what)
  sharding = data_sharding(mesh)
  return (sharding,) + process_rows(sharding, batch_size)


def local_rows(array: jax.Array, n: int) -> np.ndarray:
  """The first `n` rows of a batch-sharded global array that live on this process (no communication)."""
  shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
  rows, have = [], 0
  for shard in shards:
    if have >= n:
      break
    data = np.asarray(shard.data)
    rows.append(data[:n - have])
    have += len(rows[-1])
  return np.concatenate(rows)[:n]
