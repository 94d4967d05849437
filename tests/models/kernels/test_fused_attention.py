"""The native softmax-attention CPU kernels (hatnet_jax/models/kernels/fused_attention.py): values and gradients against
XLA's path (windows, partial windows, one window over the map, global keys), bitwise determinism, vmap, and
HAT-Net with them against XLA's attention."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hatnet_jax import models
from hatnet_jax.models.backbone import attention
from hatnet_jax.models.kernels import fused_attention

pytestmark = pytest.mark.skipif(not fused_attention.available(),
                                reason=f'native attention unavailable: {fused_attention.unavailable_reason()}')


def _check(native, xla, args, seed=7):
  """Outputs and the gradients of <out, random cotangent> of two implementations agree (float32 rounding: the
  absolute tolerance scales with the values' size)."""
  out_n, out_x = jax.jit(native)(*args), jax.jit(xla)(*args)
  cot = jax.random.normal(jax.random.key(seed), out_x.shape)
  argnums = tuple(range(len(args)))
  grad = lambda f: jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * cot), argnums=argnums))(*args)
  close = lambda a, b, rtol: np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(1.0, float(jnp.abs(b).max())))
  close(out_n, out_x, 1e-5)
  for g_n, g_x in zip(grad(native), grad(xla)):
    close(g_n, g_x, 1e-4)


# (B, H, W, 3C), heads, grid: whole windows; partial windows at the bottom and right (masked keys, cropped
# queries); head_dim 20, not a multiple of the vector width; a window larger than the map; grid 8 as stage 1.
@pytest.mark.parametrize('shape,heads,grid', [((2, 14, 14, 3 * 96), 2, 7), ((1, 9, 11, 3 * 40), 2, 4),
                                              ((2, 5, 6, 3 * 20), 1, 8), ((1, 16, 24, 3 * 48), 1, 8)])
def test_windows_match_xla_path(shape, heads, grid):
  qkv = jax.random.normal(jax.random.key(0), shape)
  _check(lambda x: fused_attention.window_attention(x, heads, (grid, grid)),
         lambda x: attention.local_attention(x, heads, grid, 'xla'), (qkv,))


def test_one_window_over_the_map_is_plain_multi_head_attention():
  b, h, w, c, heads = 2, 7, 5, 64, 4
  qkv = jax.random.normal(jax.random.key(1), (b, h, w, 3 * c))

  def xla(x):
    x = x.reshape(b, h * w, 3, heads, c // heads)
    return jax.nn.dot_product_attention(x[:, :, 0], x[:, :, 1], x[:, :, 2], implementation='xla').reshape(b, h, w, c)
  _check(lambda x: fused_attention.window_attention(x, heads, (h, w)), xla, (qkv,))


# (B, T queries, S keys, C, heads): several query blocks (T > 64) and keys not a multiple of 16; more keys
# than queries; larger scores (scaled inputs) where the softmax's maximum matters.
@pytest.mark.parametrize('b,t,s,c,heads,scale', [(2, 150, 49, 96, 2, 1.0), (1, 30, 70, 40, 2, 1.0),
                                                 (2, 64, 7, 48, 1, 6.0)])
def test_global_matches_xla_path(b, t, s, c, heads, scale):
  q = scale * jax.random.normal(jax.random.key(2), (b, t, c))
  kv = scale * jax.random.normal(jax.random.key(3), (b, s, 2 * c))

  def xla(q, kv):
    kv = kv.reshape(b, s, 2, heads, c // heads)
    return jax.nn.dot_product_attention(q.reshape(b, t, heads, c // heads), kv[:, :, 0], kv[:, :, 1],
                                        implementation='xla').reshape(b, t, c)
  _check(lambda q, kv: fused_attention.global_attention(q, kv, heads), xla, (q, kv))


def test_bitwise_deterministic():
  qkv = jax.random.normal(jax.random.key(4), (4, 16, 16, 3 * 64))
  q, kv = qkv[:, :, :, :64].reshape(4, 256, 64), qkv[:, :4, :4, :128].reshape(4, 16, 128)

  def run():
    loss = lambda x, q, kv: (jnp.sum(jnp.sin(fused_attention.window_attention(x, 2, (8, 8))))
                             + jnp.sum(jnp.sin(fused_attention.global_attention(q, kv, 2))))
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(qkv, q, kv)
  for a, b in zip(jax.tree.leaves(run()), jax.tree.leaves(run())):
    np.testing.assert_array_equal(a, b)


def test_vmap_equals_a_loop():
  qkv = jax.random.normal(jax.random.key(5), (3, 2, 8, 8, 3 * 32))
  batched = jax.vmap(lambda x: fused_attention.window_attention(x, 2, (4, 4)))(qkv)
  for i in range(qkv.shape[0]):
    np.testing.assert_array_equal(batched[i], fused_attention.window_attention(qkv[i], 2, (4, 4)))


@pytest.mark.slow  # two model compilations; the PyTorch logits tests run the kernels by default (test_convert.py)
def test_hatnet_with_native_attention_matches_xla_attention():
  """The whole model (a reduced tiny at 36 px: partial windows in stages 1-2, global keys, the plain MHSA
  of stage 4), logits and parameter gradients."""
  micro = dict(dims=(16, 32, 48, 64), head_dim=16, depths=(1, 1, 1, 1), num_classes=10)
  native, xla = (models.create('hatnet_tiny', attention_impl=impl, depthwise_impl='shift', **micro)
                 for impl in ('native', 'xla'))
  x = jax.random.normal(jax.random.key(0), (2, 36, 36, 3))
  variables = xla.init(jax.random.key(1), x)

  def logits_and_grads(model):
    loss = lambda v: jnp.mean(jax.nn.log_softmax(model.apply(v, x))[:, 0])
    fn = jax.jit(lambda v: (model.apply(v, x), jax.grad(loss)(v)))
    assert fn.lower(variables).as_text().count('hatnet_window_attention_bwd') == (4 if model is native else 0)
    return fn(variables)
  (logits_n, grads_n), (logits_x, grads_x) = logits_and_grads(native), logits_and_grads(xla)
  np.testing.assert_allclose(logits_n, logits_x, rtol=1e-4, atol=1e-4)
  for a, b in zip(jax.tree.leaves(grads_n), jax.tree.leaves(grads_x)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_native_needs_float32():
  x = jnp.ones((1, 8, 8, 48), jnp.bfloat16)
  module = attention.HMHSA(48, 16, 4, 2, attention_impl='native', dtype=jnp.bfloat16)
  with pytest.raises(ValueError, match="attention_impl 'native' cannot run here: they compute in float32"):
    module.init(jax.random.key(0), x, train=False)
  with pytest.raises(ValueError, match="'native'"):
    models.create('hatnet_tiny', attention_impl='fast')
