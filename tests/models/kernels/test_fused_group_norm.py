"""The native GroupNorm CPU kernel (hatnet_jax/models/kernels/fused_group_norm.py): values and gradients against Flax's
GroupNorm and a float64 reference, bitwise determinism, vmap, the parameter tree, and its errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from hatnet_jax.models import layers
from hatnet_jax.models.kernels import fused_group_norm

pytestmark = pytest.mark.skipif(not fused_group_norm.available(),
                                reason=f'native GroupNorm unavailable: {fused_group_norm.unavailable_reason()}')


def _variables(x):
  variables = layers.group_norm('n', impl='xla').init(jax.random.key(0), x)
  # Not the initial ones and zeros, so that the scale and bias enter the gradients.
  return jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(1), p.shape), variables)


# Shapes: one vector of channels; channels not a multiple of 16 (a tail only, and 6 vectors + a tail over
# two register blocks); rows not a multiple of the 8-row bands; a stage-1-like map.
@pytest.mark.parametrize('shape', [(2, 9, 11, 16), (3, 20, 5, 7), (2, 17, 3, 100), (4, 24, 24, 48)])
def test_matches_flax_values_and_gradients(shape):
  x = 1.5 + 2.0 * jax.random.normal(jax.random.key(2), shape)
  cot = jax.random.normal(jax.random.key(3), shape)
  variables = _variables(x)

  def run(impl):
    module = layers.group_norm('n', impl=impl)
    loss = lambda v, x: jnp.sum(module.apply(v, x) * cot)
    return jax.jit(module.apply)(variables, x), jax.jit(jax.grad(loss, argnums=(0, 1)))(variables, x)
  (y_n, g_n), (y_x, g_x) = run('native'), run('xla')
  np.testing.assert_allclose(y_n, y_x, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(g_n), jax.tree.leaves(g_x)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))


def test_large_mean_matches_float64_reference():
  """A map far from zero mean (a deep residual stream): the two-pass statistics keep the digits."""
  x = 100.0 + 2.0 * jax.random.normal(jax.random.key(4), (2, 17, 3, 40))
  variables = _variables(x)
  xs = np.asarray(x, np.float64)
  mean = xs.mean(axis=(1, 2, 3), keepdims=True)
  var = ((xs - mean) ** 2).mean(axis=(1, 2, 3), keepdims=True)
  p = variables['params']
  ref = (xs - mean) / np.sqrt(var + 1e-6) * np.asarray(p['scale'], np.float64) + np.asarray(p['bias'], np.float64)
  y = layers.group_norm('n', impl='native').apply(variables, x)
  np.testing.assert_allclose(y, ref, atol=2e-5)


def test_bitwise_deterministic_and_vmap_equals_a_loop():
  x = jax.random.normal(jax.random.key(5), (3, 2, 19, 6, 40))
  scale, bias = 1.0 + 0.1 * jax.random.normal(jax.random.key(6), (2, 40))
  grad = jax.jit(jax.grad(lambda x, s, b: jnp.sum(jnp.sin(fused_group_norm.group_norm(x, s, b, 1e-6))),
                          argnums=(0, 1, 2)))
  for a, b in zip(grad(x[0], scale, bias), grad(x[0], scale, bias)):
    np.testing.assert_array_equal(a, b)
  batched = jax.vmap(lambda x: fused_group_norm.group_norm(x, scale, bias, 1e-6))(x)
  for i in range(x.shape[0]):
    np.testing.assert_array_equal(batched[i], fused_group_norm.group_norm(x[i], scale, bias, 1e-6))


def test_same_parameters_as_flax_and_clear_errors():
  x = jnp.ones((1, 4, 4, 8))
  ours = layers.group_norm('n', impl='native').init(jax.random.key(0), x)
  flax_gn = nn.GroupNorm(num_groups=1, epsilon=1e-6).init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, flax_gn)
  with pytest.raises(ValueError, match="norm_impl 'native' normalises float32 NHWC maps"):
    layers.group_norm('n', impl='native').init(jax.random.key(0), x.astype(jnp.bfloat16))
  with pytest.raises(ValueError, match="norm_impl must be 'auto', 'native' or 'xla'"):
    layers.group_norm('n', impl='fast').init(jax.random.key(0), x)
