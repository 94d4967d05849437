"""The optimizer of the recipes: AdamW with decoupled weight decay on kernels only (classification) or on
every parameter (config.weight_decay_on='all': mmseg's AdamW in the segmentation recipe), optional
gradient clipping."""
from typing import TYPE_CHECKING

import jax
import optax

if TYPE_CHECKING:  # only for annotations: the GPU machine's image has no ml_collections
  import ml_collections

# Parameter names that get weight decay: the weights of dense and convolution layers (depthwise ones
# included). Biases, GroupNorm scales/offsets and anything else are not decayed.
DECAYED_PARAM_NAMES = ('kernel',)


def weight_decay_mask(params):
  """A pytree of bools like `params`: True where weight decay applies (leaves named 'kernel')."""

  def decayed(path, _):
    last = path[-1]
    name = getattr(last, 'key', getattr(last, 'name', None))
    return name in DECAYED_PARAM_NAMES

  return jax.tree_util.tree_map_with_path(decayed, params)


def create_optimizer(config: 'ml_collections.ConfigDict', learning_rate_fn: optax.Schedule
                     ) -> optax.GradientTransformation:
  """optax.adamw(b1, b2, eps, weight_decay on kernels) after clipping by global norm (when grad_clip_norm > 0)."""
  which = config.get('weight_decay_on', 'kernels')
  if which not in ('kernels', 'all'):
    raise ValueError(f"config.weight_decay_on must be 'kernels' or 'all'; got {which!r}")
  adamw = optax.adamw(learning_rate=learning_rate_fn, b1=config.b1, b2=config.b2, eps=config.eps,
                      weight_decay=config.weight_decay, mask=weight_decay_mask if which == 'kernels' else None)
  if config.grad_clip_norm and config.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adamw)
  return adamw
