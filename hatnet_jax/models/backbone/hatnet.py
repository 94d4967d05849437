"""HAT-Net: a convolutional stem, four stages of H-MHSA + inverted-residual blocks, and a linear head.

Parameter tree (blocks of a stage are scanned, so their parameters carry a leading `depth` axis):
  stem_conv1, stem_norm, stem_conv2, stage1..stage4/blocks/{attn, conv}, down2..down4/{conv, norm}, head.
"""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from hatnet_jax.models import layers
from hatnet_jax.models.backbone.attention import HMHSA
from hatnet_jax.models.backbone.variants import Variant


class InvertedResidual(nn.Module):
  """GN -> 1x1 C->eC -> SiLU -> depthwise kxk -> SiLU -> dropout -> 1x1 eC->C -> GN -> dropout (no biases)."""
  dim: int
  expansion: int
  kernel_size: int
  drop_rate: float = 0.0
  depthwise_impl: str = 'auto'
  norm_impl: str = 'auto'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    dense = lambda n, name: layers.dense(n, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                                         name=name)
    y = layers.group_norm('norm1', self.param_dtype, self.norm_impl)(x)
    y = dense(self.dim * self.expansion, 'fc1')(y)
    y = layers.DepthwiseConv(self.kernel_size, self.depthwise_impl, self.dtype, self.param_dtype, silu_around=True,
                             name='dwconv')(y)  # SiLU -> depthwise -> SiLU
    y = layers.channel_dropout(self.drop_rate)(y, deterministic=not train)
    y = layers.group_norm('norm2', self.param_dtype, self.norm_impl)(dense(self.dim, 'fc2')(y))
    return layers.channel_dropout(self.drop_rate)(y, deterministic=not train)


class Block(nn.Module):
  """x + DropPath(H-MHSA(x)), then x + DropPath(IRB(x)). Called as a scan body: (x, rate) -> (x, None)."""
  dim: int
  head_dim: int
  grid_size: int
  ds_ratio: int
  expansion: int
  kernel_size: int
  train: bool
  drop_rate: float = 0.0
  attention_impl: str | None = None
  depthwise_impl: str = 'auto'
  norm_impl: str = 'auto'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  sow_attention: bool = False

  @nn.compact
  def __call__(self, x, drop_path_rate):
    kw = dict(drop_rate=self.drop_rate, norm_impl=self.norm_impl, dtype=self.dtype, param_dtype=self.param_dtype)
    y = HMHSA(self.dim, self.head_dim, self.grid_size, self.ds_ratio, attention_impl=self.attention_impl,
              sow_attention=self.sow_attention, name='attn', **kw)(x, self.train)
    x = x + layers.drop_path(self, y, drop_path_rate, not self.train)
    y = InvertedResidual(self.dim, self.expansion, self.kernel_size, depthwise_impl=self.depthwise_impl,
                         name='conv', **kw)(x, self.train)
    x = x + layers.drop_path(self, y, drop_path_rate, not self.train)
    return x, None


def unrolls(unroll: bool | int, depth: int) -> bool:
  """Whether a stage of `depth` blocks is unrolled under the model's `unroll` setting (bool or max depth)."""
  if isinstance(unroll, bool):
    return unroll
  return depth <= int(unroll)


class Stage(nn.Module):
  """`depth` identical blocks, their parameters stacked on a leading `depth` axis (one tree per stage).

  Run as a loop (lax.scan: compile time does not grow with depth) or unrolled (a Python loop: XLA sees
  every block, each with its own saved activations and static parameter slices).

  The loop carries the next block's vector parameters (norms, biases, depthwise kernels) instead of
  slicing them from the stacked ones where they are used: XLA fuses such a dynamic slice into the
  element-wise loops that read the parameter, with an index computation per element (the depthwise pass
  of hatnet_large's scanned stage 3 ran 4-5x slower per element). Matrices go to matmuls, which take a
  materialised slice anyway.
  """
  block: dict  # Block's fields other than `train`
  drop_path_rates: tuple[float, ...]
  remat: bool = False
  unroll: bool = False  # a Python loop; XLA sees every block (its cost analysis counts a loop body only once)

  @nn.compact
  def __call__(self, x, train: bool):
    depth = len(self.drop_path_rates)
    rates = jnp.asarray(self.drop_path_rates, jnp.float32)
    if self.block.get('sow_attention') or self.is_initializing():
      # Initialisation goes through Flax's scan (the stacked parameter tree); so do attention maps, whose
      # weights it stacks in 'intermediates'.
      block_cls = nn.remat(Block, prevent_cse=False) if self.remat else Block
      axes = {'params': 0, 'intermediates': 0}
      blocks = nn.scan(block_cls, variable_axes=axes, split_rngs={'params': True, 'dropout': True},
                       in_axes=0, length=depth)(train=train, name='blocks', **self.block)
      return blocks(x, rates)[0]
    params = flax.traverse_util.flatten_dict(self.variables['params']['blocks'])
    keys = None
    if train and self.has_rng('dropout'):
      keys = jax.random.split(self.make_rng('dropout'), depth)
    block = Block(train=train, parent=None, **self.block)  # applied as a function of each block's slice

    def apply(p, x, rate, key):
      rngs = {'dropout': key} if key is not None else {}
      with jax.named_scope('blocks'):  # profiles name the ops stageN/blocks/... as the parameter tree does
        return block.apply({'params': flax.traverse_util.unflatten_dict(p)}, x, rate, rngs=rngs)[0]
    if self.remat:
      apply = jax.checkpoint(apply, prevent_cse=False)
    if self.unroll:
      for i in range(depth):
        x = apply({k: v[i] for k, v in params.items()}, x, rates[i], None if keys is None else keys[i])
      return x
    # In the parameters' (deterministic) order, not a set's: a set of tuple keys iterates in an order that
    # changes with each process's hash seed, which reordered the lowered program and made every scanned
    # stage's train step miss the persistent compilation cache in the next process.
    carried = [k for k, v in params.items() if v.ndim != 3]  # not a stack of matrices
    first = {k: params[k][0] for k in carried}
    following = {k: jnp.roll(params[k], -1, axis=0) for k in carried}  # step i gets block i+1's
    sliced = {k: v for k, v in params.items() if k not in carried}

    def body(carry, step):
      x, current = carry
      p, nxt, rate, key = step
      return (apply({**p, **current}, x, rate, key), nxt), None
    (x, _), _ = jax.lax.scan(body, (x, first), (sliced, following, rates, keys))
    return x


class HATNet(nn.Module):
  """HAT-Net on NHWC images. `features` returns the four stage maps (strides 4, 8, 16, 32).

  The residual stream is kept in float32; with dtype=bfloat16 convolutions, projections and attention run
  in bfloat16 while GroupNorm, softmax and the logits stay in float32.
  """
  variant: Variant
  num_classes: int = 1000
  drop_path_rate: float = 0.0
  drop_rate: float = 0.0
  head_drop_rate: float = 0.2
  remat: bool = False
  # True: every stage's blocks are unrolled; an int N: the stages of at most N blocks. An unrolled stage
  # keeps each block's saved activations apart, where a scanned one stacks them into buffers the loop writes
  # and the backward pass reads (on CPU a quarter of the tiny train step); a scanned stage compiles once.
  unroll: bool | int = False
  attention_impl: str | None = None
  depthwise_impl: str = 'auto'
  norm_impl: str = 'auto'  # GroupNorm: 'auto' (the native CPU kernel where it applies), 'native' or 'xla'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  # Attention maps (hatnet_jax.tools.attention_maps): explicit softmax, weights sown into 'intermediates'.
  sow_attention: bool = False

  def _conv(self, features: int, name: str):
    return nn.Conv(features, (3, 3), strides=2, padding=((1, 1), (1, 1)), dtype=self.dtype,
                   param_dtype=self.param_dtype, kernel_init=layers.init_kernel, name=name)

  def _check_input(self, x):
    if x.ndim != 4 or x.shape[-1] != 3 or min(x.shape[1:3]) < 1:
      raise ValueError(f'HAT-Net takes NHWC RGB images (batch, height, width, 3); got shape {x.shape}')

  @nn.compact
  def features(self, x, train: bool = False):
    self._check_input(x)
    v = self.variant
    rates = np.linspace(0.0, self.drop_path_rate, sum(v.depths))
    x = self._conv(v.stem_dim, 'stem_conv1')(x)
    x = nn.silu(layers.group_norm('stem_norm', self.param_dtype, self.norm_impl)(x))
    x = self._conv(v.dims[0], 'stem_conv2')(x).astype(jnp.float32)
    maps = []
    for i, dim in enumerate(v.dims):
      if i:
        x = layers.group_norm(f'down{i + 1}_norm', self.param_dtype, self.norm_impl)(
            self._conv(dim, f'down{i + 1}_conv')(x))
      start = sum(v.depths[:i])
      block = dict(dim=dim, head_dim=v.head_dim, grid_size=v.grid_sizes[i], ds_ratio=v.ds_ratios[i],
                   expansion=v.expansions[i], kernel_size=v.kernel_sizes[i], drop_rate=self.drop_rate,
                   attention_impl=self.attention_impl, depthwise_impl=self.depthwise_impl,
                   norm_impl=self.norm_impl, dtype=self.dtype,
                   param_dtype=self.param_dtype)
      if self.sow_attention:
        block['sow_attention'] = True
      x = Stage(block, tuple(float(r) for r in rates[start:start + v.depths[i]]), self.remat,
                unrolls(self.unroll, v.depths[i]), name=f'stage{i + 1}')(x, train)
      maps.append(x)
    return maps

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = self.features(x, train)[-1].mean(axis=(1, 2))
    x = nn.Dropout(self.head_drop_rate, rng_collection='dropout')(x, deterministic=not train)
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=layers.init_kernel,
                 name='head')(x)
    return x.astype(jnp.float32)
