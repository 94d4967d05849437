"""Hierarchical Multi-Head Self-Attention (H-MHSA), the core of HAT-Net.

Feature maps are NHWC. Heads live in the channel axis as [head][head_dim], and a fused projection's output
channels as [q|k|v][head][head_dim], exactly as in the official PyTorch model, so its 1x1-conv weights load
without any permutation.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from hatnet_jax.models import layers
from hatnet_jax.models.kernels import fused_attention


def native_attention(impl: str | None, *arrays) -> bool:
  """Whether `impl` (HMHSA.attention_impl) runs these operands through the native CPU kernels
  (models/fused_attention.py): None ('' in configs) takes them where they apply (one CPU device, float32),
  'native' insists (on several devices a sharded batch is gathered onto one), 'xla' and 'cudnn' never do."""
  if impl == 'native':
    reason = fused_attention.unavailable_reason()
    if reason is None and any(a.dtype != jnp.float32 for a in arrays):
      reason = f'they compute in float32, got {sorted({str(a.dtype) for a in arrays})}'
    if reason is not None or jax.default_backend() != 'cpu':
      reason = reason or f'they run on the CPU backend, not {jax.default_backend()}'
      raise ValueError(f"attention_impl 'native' cannot run here: {reason}. Use attention_impl '' or 'xla'.")
    return True
  return impl is None and fused_attention.usable(*arrays)


def _attend(q, k, v, mask, impl):
  """Softmax(q k^T / sqrt(d)) v over (B, T, N, d) tensors; logits and softmax are computed in float32."""
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl or None)


def _attend_explicit(q, k, v, mask):
  """`_attend` written out (the math of jax.nn.dot_product_attention's XLA path), also returning the
  attention weights: (out (B, T, N, d), weights (B, N, T, S) float32). Used only for attention maps."""
  precision = jax.lax.DotAlgorithmPreset.BF16_BF16_F32 if q.dtype == jnp.bfloat16 else None
  logits = jnp.einsum('BTNH,BSNH->BNTS', q, k, precision=precision,
                      preferred_element_type=jnp.promote_types(q.dtype, jnp.float32))
  logits = logits * jnp.asarray(1.0 / np.sqrt(q.shape[-1]), logits.dtype)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.asarray(-0.7 * np.finfo(np.float32).max, logits.dtype))
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  out = jnp.einsum('BNTS,BSNH->BTNH', weights.astype(k.dtype), v)
  return out, weights


def _window_mask(h: int, w: int, grid: int) -> np.ndarray | None:
  """(num_windows, G*G) bool: True where a window position lies inside the unpadded h x w map."""
  hp, wp = -(-h // grid) * grid, -(-w // grid) * grid
  if (hp, wp) == (h, w):
    return None
  valid = np.zeros((hp, wp), bool)
  valid[:h, :w] = True
  valid = valid.reshape(hp // grid, grid, wp // grid, grid).transpose(0, 2, 1, 3)
  return valid.reshape(-1, grid * grid)


def local_attention(qkv, num_heads: int, grid: int, impl=None, force_mask: bool = False,
                    return_weights: bool = False):
  """Self-attention inside non-overlapping grid x grid windows of an NHWC map of fused [q|k|v] channels.

  Maps that `grid` does not divide are padded at the bottom/right to whole windows; padded positions are
  masked out as keys and cropped from the output, so each token attends to exactly the real tokens of its
  (possibly partial) window. force_mask applies the same masking to a divisible map (for tests: it must
  not change the result).
  return_weights: computed by the explicit softmax (same math), also return the attention weights
  (B, heads, windows, G*G queries, G*G keys) float32, windows in row-major order over the padded map
  (rows of padded query positions are included; padded keys have weight 0).
  """
  b, h, w, c3 = qkv.shape
  hp, wp = -(-h // grid) * grid, -(-w // grid) * grid
  mask = _window_mask(h, w, grid)
  if force_mask and mask is None:
    mask = np.ones(((hp // grid) * (wp // grid), grid * grid), bool)
  if not return_weights and native_attention(impl, qkv):
    return fused_attention.window_attention(qkv, num_heads, (grid, grid))  # partial windows: same semantics
  qkv = jnp.pad(qkv, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
  nh, nw = hp // grid, wp // grid
  win = qkv.reshape(b, nh, grid, nw, grid, c3).transpose(0, 1, 3, 2, 4, 5)
  win = win.reshape(b * nh * nw, grid * grid, 3, num_heads, c3 // (3 * num_heads))
  if mask is not None:
    # (b*windows, 1, 1, G*G): keys only. broadcast_to, not np.tile: b may be symbolic (jax.export).
    mask = jnp.broadcast_to(jnp.asarray(mask)[None], (b,) + mask.shape).reshape(-1, 1, 1, mask.shape[-1])
  if return_weights:
    out, weights = _attend_explicit(win[:, :, 0], win[:, :, 1], win[:, :, 2], mask)
  else:
    out = _attend(win[:, :, 0], win[:, :, 1], win[:, :, 2], mask, impl)
  out = out.reshape(b, nh, nw, grid, grid, c3 // 3).transpose(0, 1, 3, 2, 4, 5)
  out = out.reshape(b, hp, wp, c3 // 3)[:, :h, :w, :]
  if return_weights:
    weights = weights.reshape(b, nh * nw, num_heads, grid * grid, grid * grid).transpose(0, 2, 1, 3, 4)
    return out, weights
  return out


class HMHSA(nn.Module):
  """H-MHSA of a block: local window attention, then global attention to average-pooled tokens.

  With grid_size G > 1 (and pooling ratio r):
    y_loc  = window attention (G x G windows) of qkv(GN(x))
    xg     = GN_grid(x + y_loc)
    y_glob = attention of q(xg) over [k|v](GN_ds(AvgPool_r(xg)))
    out    = dropout(proj(y_glob + xg))
  With G == 1: out = dropout(proj(MHSA(qkv(GN(x))))), plain attention over all tokens.
  Any H, W work: see `local_attention` and `layers.avg_pool` for the semantics when G or r do not divide.

  attention_impl: None takes the native CPU kernels (models/fused_attention.py) where they apply (one CPU
  device, float32) and lets JAX choose elsewhere; 'native', 'xla' or 'cudnn' force one.

  sow_attention (attention maps, `hatnet_jax.tools.attention_maps`): compute the attention with an explicit
  softmax (same math as the fused jax.nn.dot_product_attention) and sow the weights into the
  'intermediates' collection: 'local_attention' (B, heads, windows, G*G, G*G) and 'global_attention'
  (B, heads, H*W, pooled tokens; with G == 1 the plain MHSA's (B, heads, H*W, H*W)). Off by default: the
  default path is the fused one.
  """
  dim: int
  head_dim: int
  grid_size: int
  ds_ratio: int
  drop_rate: float = 0.0
  attention_impl: str | None = None
  norm_impl: str = 'auto'
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  force_mask: bool = False  # tests only: take the padded/masked path even where sizes divide
  sow_attention: bool = False  # explicit softmax; sow the attention weights into 'intermediates'

  @nn.compact
  def __call__(self, x, train: bool):
    b, h, w, c = x.shape
    heads = self.dim // self.head_dim
    dense = lambda n, name: layers.dense(n, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    norm = lambda name: layers.group_norm(name, self.param_dtype, self.norm_impl)
    qkv = dense(3 * c, 'qkv')(norm('norm')(x))
    attend = _attend
    if self.sow_attention:
      def attend(q, k, v, mask, impl):  # pylint: disable=unused-argument
        out, weights = _attend_explicit(q, k, v, mask)
        self.sow('intermediates', 'global_attention', weights)
        return out
    if self.grid_size > 1:
      if self.sow_attention:
        y, weights = local_attention(qkv, heads, self.grid_size, force_mask=self.force_mask, return_weights=True)
        self.sow('intermediates', 'local_attention', weights)
      else:
        y = local_attention(qkv, heads, self.grid_size, self.attention_impl, self.force_mask)
      xg = norm('grid_norm')(x + y)
      q = dense(c, 'q')(xg).reshape(b, h * w, c)
      pooled = norm('ds_norm')(layers.avg_pool(xg, self.ds_ratio))
      kv = dense(2 * c, 'kv')(pooled)
      kv = kv.reshape(b, kv.shape[1] * kv.shape[2], 2 * c)
      if not self.sow_attention and native_attention(self.attention_impl, q, kv):
        y = fused_attention.global_attention(q, kv, heads)
      else:
        kv = kv.reshape(b, -1, 2, heads, self.head_dim)
        y = attend(q.reshape(b, h * w, heads, self.head_dim), kv[:, :, 0], kv[:, :, 1], None, self.attention_impl)
      y = y.reshape(b, h, w, c) + xg
    elif not self.sow_attention and native_attention(self.attention_impl, qkv):
      y = fused_attention.window_attention(qkv, heads, (h, w))  # one window: plain MHSA over all tokens
    else:
      qkv = qkv.reshape(b, h * w, 3, heads, self.head_dim)
      y = attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], None, self.attention_impl).reshape(b, h, w, c)
    y = dense(c, 'proj')(y)
    return layers.channel_dropout(self.drop_rate)(y, deterministic=not train)
