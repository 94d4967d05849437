"""The native SiLU -> depthwise -> SiLU CPU kernel (hatnet_jax/models/kernels/fused_depthwise.py): values and gradients
against XLA's path, bitwise determinism, vmap and the model with it (tests/models/kernels/test_native.py: where 'auto'
takes it, and the fallbacks)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hatnet_jax import models
from hatnet_jax.models import layers
from hatnet_jax.models.kernels import fused_depthwise

pytestmark = pytest.mark.skipif(not fused_depthwise.available(),
                                reason=f'native kernel unavailable: {fused_depthwise.unavailable_reason()}')


def _value_and_grads(impl, x, k, seed=0):
  module = layers.DepthwiseConv(k, impl=impl, silu_around=True)
  variables = module.init(jax.random.key(1), x)
  cot = jax.random.normal(jax.random.key(seed + 2), x.shape)
  loss = lambda v, x: jnp.sum(module.apply(v, x) * cot)
  out = jax.jit(module.apply)(variables, x)
  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables, x)
  return out, grads


# Shapes: several row bands (H > 16), a map smaller than the kernel, channels not a multiple of the vector
# width, batch 1, kernel sizes 3 and 5 (hatnet_medium's first stage).
@pytest.mark.parametrize('shape,k', [((2, 9, 11, 16), 3), ((1, 37, 5, 24), 5), ((3, 3, 2, 7), 5),
                                     ((2, 20, 18, 40), 3)])
def test_matches_xla_path_values_and_gradients(shape, k):
  x = 2.0 * jax.random.normal(jax.random.key(0), shape)
  (out_n, grads_n), (out_s, grads_s) = _value_and_grads('native', x, k), _value_and_grads('shift', x, k)
  np.testing.assert_allclose(out_n, out_s, rtol=1e-5, atol=1e-5)
  dk_n, dx_n = grads_n[0]['params']['kernel'], grads_n[1]
  dk_s, dx_s = grads_s[0]['params']['kernel'], grads_s[1]
  np.testing.assert_allclose(dx_n, dx_s, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dk_n, dk_s, rtol=1e-4, atol=1e-4 * float(jnp.abs(dk_s).max()))


def test_bitwise_deterministic():
  x = jax.random.normal(jax.random.key(0), (4, 40, 24, 32))
  first, again = _value_and_grads('native', x, 3), _value_and_grads('native', x, 3)
  for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)


def test_vmap_equals_a_loop():
  x = jax.random.normal(jax.random.key(0), (3, 2, 6, 5, 8))
  kernel = 0.3 * jax.random.normal(jax.random.key(1), (3, 3, 8))
  batched = jax.vmap(fused_depthwise.silu_depthwise_silu, in_axes=(0, None))(x, kernel)
  for i in range(x.shape[0]):
    np.testing.assert_array_equal(batched[i], fused_depthwise.silu_depthwise_silu(x[i], kernel))


@pytest.mark.slow  # two model compilations (~45 s); the PyTorch logits test of tiny runs the kernel by default
def test_hatnet_with_the_kernel_matches_xla_path():
  micro = dict(dims=(16, 32, 48, 64), head_dim=16, depths=(1, 1, 1, 1), num_classes=10)
  native, shift = (models.create('hatnet_tiny', depthwise_impl=impl, **micro) for impl in ('native', 'shift'))
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = shift.init(jax.random.key(1), x)

  def logits_and_grads(model):
    loss = lambda v: jnp.mean(jax.nn.log_softmax(model.apply(v, x))[:, 0])
    return jax.jit(lambda v: (model.apply(v, x), jax.grad(loss)(v)))(variables)
  (logits_n, grads_n), (logits_s, grads_s) = logits_and_grads(native), logits_and_grads(shift)
  np.testing.assert_allclose(logits_n, logits_s, rtol=1e-4, atol=1e-4)
  for a, b in zip(jax.tree.leaves(grads_n), jax.tree.leaves(grads_s)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_native_needs_silu_around_and_float32():
  x = jnp.ones((1, 4, 4, 8))
  with pytest.raises(ValueError, match="'native' computes SiLU"):
    layers.DepthwiseConv(3, impl='native').init(jax.random.key(0), x)
  with pytest.raises(ValueError, match='dtype bfloat16'):
    layers.DepthwiseConv(3, impl='native', dtype=jnp.bfloat16, silu_around=True).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match='kernel size 9'):
    layers.DepthwiseConv(9, impl='native', silu_around=True).init(jax.random.key(0), x)
  assert not fused_depthwise.usable(x, 9)  # an explicit error above, XLA's path under 'auto'
