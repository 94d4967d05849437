"""H-MHSA's softmax attention as native CPU kernels (native_attention.cc) with their VJPs.

On XLA's CPU backend the window attention is a pad, a window transpose and its inverse over the whole map
plus batched products of small matrices that run well below PyTorch's bmm; the kernels gather each
(image, window, head)'s rows into small dense buffers instead, and their backward passes recompute the
probabilities rather than saving them (BENCHMARKS.md has the figures). Built on first use like the
depthwise kernel (models/native.py); attention.HMHSA takes them where `usable()` says so.
"""
import jax
import numpy as np

from hatnet_jax.models.kernels import native

_WIN_FWD, _WIN_BWD = 'hatnet_window_attention_fwd', 'hatnet_window_attention_bwd'
_GLOB_FWD, _GLOB_BWD = 'hatnet_global_attention_fwd', 'hatnet_global_attention_bwd'
_KERNEL = native.Kernel('native_attention', ((_WIN_FWD, 'HatnetWindowAttentionFwd'),
                                              (_WIN_BWD, 'HatnetWindowAttentionBwd'),
                                              (_GLOB_FWD, 'HatnetGlobalAttentionFwd'),
                                              (_GLOB_BWD, 'HatnetGlobalAttentionBwd')), 'softmax attention')
available, unavailable_reason, usable = _KERNEL.available, _KERNEL.unavailable_reason, _KERNEL.usable


def _call(target, outs, *args, **attrs):
  return _KERNEL.call(target, outs, *args, **{k: np.int64(v) for k, v in attrs.items()})


def window_attention(qkv, heads: int, window: tuple[int, int]):
  """Attention within window[0] x window[1] windows of a float32 (B, H, W, 3C) map of [q|k|v][head][d]
  channels -> (B, H, W, C). Partial windows at the bottom/right edge attend among their real tokens only
  (attention.local_attention's masked semantics); a window covering the map is plain multi-head attention."""
  return _window_attention(qkv, heads, tuple(int(s) for s in window))


def _window_out(qkv):
  return jax.ShapeDtypeStruct(qkv.shape[:-1] + (qkv.shape[-1] // 3,), qkv.dtype)


def _make_window_attention():
  def forward(qkv, heads, window):
    return _call(_WIN_FWD, _window_out(qkv), qkv, heads=heads, window_h=window[0], window_w=window[1])

  f = jax.custom_vjp(forward, nondiff_argnums=(1, 2))
  f.defvjp(lambda qkv, heads, window: (forward(qkv, heads, window), qkv),
           lambda heads, window, qkv, g: (_call(_WIN_BWD, jax.ShapeDtypeStruct(qkv.shape, qkv.dtype), qkv,
                                                g.astype(qkv.dtype), heads=heads, window_h=window[0],
                                                window_w=window[1]),))
  return f


_window_attention = _make_window_attention()


def global_attention(q, kv, heads: int):
  """Attention of float32 queries (B, T, C) over keys and values (B, S, 2C) of [k|v][head][d] channels ->
  (B, T, C)."""
  return _global_attention(q, kv, int(heads))


def _make_global_attention():
  def forward(q, kv, heads):
    return _call(_GLOB_FWD, jax.ShapeDtypeStruct(q.shape, q.dtype), q, kv, heads=heads)

  def backward(heads, res, g):
    q, kv = res
    outs = (jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct(kv.shape, kv.dtype))
    return tuple(_call(_GLOB_BWD, outs, q, kv, g.astype(q.dtype), heads=heads))

  f = jax.custom_vjp(forward, nondiff_argnums=(2,))
  f.defvjp(lambda q, kv, heads: (forward(q, kv, heads), (q, kv)), backward)
  return f


_global_attention = _make_global_attention()
