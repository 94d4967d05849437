"""HAT-Net models: `create(name, ...)` builds a variant from the table in `variants`."""
import jax.numpy as jnp

from hatnet_jax.models.attention import HMHSA, local_attention
from hatnet_jax.models.hatnet import HATNet
from hatnet_jax.models.variants import PARAM_COUNTS, VARIANTS, Variant, get_variant

__all__ = ['HATNet', 'HMHSA', 'PARAM_COUNTS', 'VARIANTS', 'Variant', 'create', 'get_variant', 'local_attention',
           'names']

def names() -> list[str]:
  return sorted(VARIANTS)


def _dtype(d, field):
  """jnp.dtype of a name ('bfloat16') or dtype; ValueError naming the model field for a bad one."""
  try:
    return jnp.dtype(d)
  except TypeError:
    raise ValueError(f"model {field}={d!r} is not a dtype; use 'float32' or 'bfloat16'") from None


def create(name: str, *, num_classes: int = 1000, drop_path_rate: float = 0.0, drop_rate: float = 0.0,
           head_drop_rate: float = 0.2, dtype=jnp.float32, param_dtype=jnp.float32, remat: bool = False,
           unroll: bool = False, attention_impl: str | None = None, depthwise_impl: str = 'auto', **overrides) -> HATNet:
  """HAT-Net variant `name` ('hatnet_tiny', ...); `overrides` replace fields of its table row (e.g. dims).

  dtype is the compute dtype ('float32' or 'bfloat16'), param_dtype that of the parameters.
  remat rematerialises each block in the backward pass; unroll unrolls the scan over a stage's blocks
  (longer compiles; XLA's cost analysis then counts every block).
  attention_impl: None/'' (JAX chooses), 'xla', or 'cudnn' (flash attention on GPU).
  """
  variant = get_variant(name, **overrides)
  if not 0.0 <= drop_path_rate < 1.0 or not 0.0 <= drop_rate < 1.0 or not 0.0 <= head_drop_rate < 1.0:
    raise ValueError(f'drop rates must lie in [0, 1); got drop_path_rate={drop_path_rate}, '
                     f'drop_rate={drop_rate}, head_drop_rate={head_drop_rate}')
  if attention_impl not in (None, '', 'xla', 'cudnn'):
    raise ValueError(f"attention_impl must be '', 'xla' or 'cudnn'; got {attention_impl!r}")
  return HATNet(variant, num_classes=num_classes, drop_path_rate=drop_path_rate, drop_rate=drop_rate,
                head_drop_rate=head_drop_rate, remat=remat, unroll=unroll, attention_impl=attention_impl or None,
                depthwise_impl=depthwise_impl, dtype=_dtype(dtype, 'dtype'), param_dtype=_dtype(param_dtype, 'param_dtype'))
