"""HAT-Net model family: parameter counts, shapes, training-mode randomness, mixed precision, odd sizes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.references.param_counts import PARAM_COUNTS
from hatnet_jax import models
from hatnet_jax.models import layers
from hatnet_jax.models.backbone import attention, hatnet


# Behavioural tests use a narrow, shallow HAT-Net (same code paths as the real variants: all four stage
# kinds, scans, windows, pooling) so that compiles stay short; real variants are covered by the shape,
# count and PyTorch parity tests.
MICRO = dict(dims=(16, 32, 48, 64), head_dim=16, depths=(1, 1, 2, 1))


def _micro(**kw):
  return models.create('hatnet_tiny', num_classes=10, **MICRO, **kw)


def _randomize_norms(params, seed=0):
  """Non-trivial GroupNorm scales/biases (at init they are 1 and 0)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  out = []
  for (path, leaf), k in zip(leaves, keys):
    name = jax.tree_util.keystr(path)
    if 'norm' in name and 'scale' in name:
      leaf = leaf + 0.5 * jax.random.uniform(k, leaf.shape) - 0.25
    elif 'norm' in name and 'bias' in name:
      leaf = leaf + 0.1 * jax.random.normal(k, leaf.shape)
    out.append(leaf)
  return jax.tree_util.tree_unflatten(treedef, out)


@pytest.fixture(scope='module')
def micro():
  """(model with dropout and drop path, randomised params, a batch of 64x64 images, jitted apply)."""
  model = _micro(drop_path_rate=0.3, drop_rate=0.1)
  x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  params = _randomize_norms(jax.jit(lambda: model.init(jax.random.key(1), x, train=False))()['params'])
  apply = jax.jit(lambda p, x, rng, train: model.apply({'params': p}, x, train=train, rngs={'dropout': rng}),
                  static_argnums=3)
  return model, params, x, apply


# medium and large trace for ~20-45 s each: in the slow suite.
@pytest.mark.parametrize('name', [n if n in ('hatnet_tiny', 'hatnet_small') else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(PARAM_COUNTS)])
def test_parameter_counts_and_shapes(name):
  model = models.create(name, num_classes=1000)
  x = jnp.zeros((2, 224, 224, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  assert list(variables) == ['params']
  assert sum(p.size for p in jax.tree.leaves(variables)) == PARAM_COUNTS[name]
  logits = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
  feats = jax.eval_shape(lambda v: model.apply(v, x, train=False, method=model.features), variables)
  dims = models.VARIANTS[name].dims
  assert [f.shape for f in feats] == [(2, s, s, d) for s, d in zip((56, 28, 14, 7), dims)]


@pytest.mark.slow  # default suite under 15 min on the 2-core EPYC (16:00 there)
def test_jit_grad_finite_in_train_mode(micro):
  model, params, x, _ = micro

  @jax.jit
  def loss_and_grad(params, rng):
    def loss(p):
      logits = model.apply({'params': p}, x, train=True, rngs={'dropout': rng})
      return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[:, 0])
    return jax.value_and_grad(loss)(params)

  value, grads = loss_and_grad(params, jax.random.key(3))
  assert np.isfinite(float(value))
  norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(norms)) and sum(norms) > 0


@pytest.mark.slow  # default suite under 15 min on the 2-core EPYC (16:00 there)
def test_dropout_and_drop_path_only_in_train_mode_and_deterministic_in_rng(micro):
  _, params, x, run = micro
  eval_a, eval_b = run(params, x, jax.random.key(0), False), run(params, x, jax.random.key(1), False)
  np.testing.assert_array_equal(eval_a, eval_b)  # eval ignores the rng
  train_a, train_a2 = run(params, x, jax.random.key(0), True), run(params, x, jax.random.key(0), True)
  train_b = run(params, x, jax.random.key(1), True)
  np.testing.assert_array_equal(train_a, train_a2)  # same rng, same result
  assert not np.allclose(train_a, train_b)  # another rng, another result
  assert not np.allclose(train_a, eval_a)


def _stage(rates, remat=False, unroll=False):
  block = dict(dim=32, head_dim=16, grid_size=4, ds_ratio=2, expansion=2, kernel_size=3)
  return hatnet.Stage(block, rates, remat, unroll)


@pytest.mark.slow  # default suite under 15 min on the 2-core EPYC (16:00 there)
def test_drop_path_rates_apply_per_block():
  """Train differs from eval only through drop path (dropout is off): rates of 0 make them equal."""
  x = jax.random.normal(jax.random.key(0), (8, 8, 8, 32))
  variables = _stage((0.0, 0.0)).init(jax.random.key(1), x, train=False)
  for rates, equal in (((0.0, 0.0), True), ((0.0, 0.5), False)):
    stage = _stage(rates)
    train = stage.apply(variables, x, train=True, rngs={'dropout': jax.random.key(2)})
    assert np.allclose(train, stage.apply(variables, x, train=False), atol=1e-6) == equal
  # rate 0.5 on the 2nd block drops some whole samples of it: those samples equal the 1st block's output
  first = hatnet.Stage(dict(dim=32, head_dim=16, grid_size=4, ds_ratio=2, expansion=2, kernel_size=3), (0.0,))
  one = first.apply(jax.tree.map(lambda p: p[:1], variables), x, train=False)
  train = _stage((0.0, 0.999)).apply(variables, x, train=True, rngs={'dropout': jax.random.key(3)})
  np.testing.assert_allclose(train, one, atol=1e-5)


@pytest.mark.slow  # ~25 s; the default suite keeps the unrolled-stage check of the same kind
def test_remat_gives_the_same_gradients():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 32))
  variables = _stage((0.0, 0.1)).init(jax.random.key(1), x, train=False)

  def grads(stage):
    return jax.jit(jax.grad(lambda v: stage.apply(v, x, train=True, rngs={'dropout': jax.random.key(2)}).sum()))(
        variables)
  for a, b in zip(jax.tree.leaves(grads(_stage((0.0, 0.1)))), jax.tree.leaves(grads(_stage((0.0, 0.1), True)))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # default suite under 15 min on the 2-core EPYC (16:00 there)
def test_unrolled_stage_gives_the_same_outputs_and_gradients():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 32))
  variables = _stage((0.0, 0.1, 0.2)).init(jax.random.key(1), x, train=False)

  def run(stage):
    loss = lambda v: stage.apply(v, x, train=True, rngs={'dropout': jax.random.key(2)}).sum()
    return jax.jit(jax.value_and_grad(loss))(variables)
  (loss_s, grads_s), (loss_u, grads_u) = run(_stage((0.0, 0.1, 0.2))), run(_stage((0.0, 0.1, 0.2), unroll=True))
  np.testing.assert_allclose(loss_u, loss_s, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_u), jax.tree.leaves(grads_s)):  # fusions differ: float rounding
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert [hatnet.unrolls(u, d) for u, d in [(True, 27), (False, 2), (8, 8), (8, 27), (0, 1)]] == [
      True, False, True, False, False]


@pytest.mark.slow  # default suite under 15 min on the 2-core EPYC (16:00 there)
def test_bfloat16_close_to_float32_with_float32_params_softmax_norms(micro):
  _, params, x, _ = micro
  f32, bf16 = _micro(), _micro(dtype='bfloat16')
  ref = jax.jit(lambda p: f32.apply({'params': p}, x, train=False))(params)
  out = jax.jit(lambda p: bf16.apply({'params': p}, x, train=False))(params)
  assert out.dtype == jnp.float32
  rel = float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref)))
  assert rel < 0.05, rel
  # Parameters stay f32; matmuls run in bf16; every exp (softmax) and norm rsqrt stays in f32.
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(
      jax.eval_shape(lambda: bf16.init(jax.random.key(0), x, train=False))))
  jaxpr = jax.make_jaxpr(lambda p: bf16.apply({'params': p}, x, train=False))(params)
  eqns = []

  def walk(jx):
    for e in jx.eqns:
      eqns.append(e)
      for sub in jax.extend.core.jaxprs_in_params(e.params):
        walk(sub)
  walk(jaxpr.jaxpr)
  dots = [e for e in eqns if e.primitive.name == 'dot_general']
  assert dots and all(v.aval.dtype == jnp.bfloat16 for e in dots for v in e.invars)
  for prim in ('exp', 'rsqrt'):
    found = [e for e in eqns if e.primitive.name == prim]
    assert found and all(e.outvars[0].aval.dtype == jnp.float32 for e in found), prim


@pytest.mark.parametrize('size', [100, 256])
def test_non_divisible_sizes_work(micro, size):
  model, params, _, _ = micro
  x = jax.random.normal(jax.random.key(0), (1, size, size, 3))
  feats = jax.jit(lambda p: model.apply({'params': p}, x, train=False, method=model.features))(params)
  expected = [-(-size // 4)]
  for _ in range(3):
    expected.append(-(-expected[-1] // 2))
  assert [f.shape[1] for f in feats] == expected
  assert all(bool(jnp.all(jnp.isfinite(f))) for f in feats)


@pytest.mark.parametrize('grid,ratio,size', [(7, 2, 14), (8, 4, 16), (1, 1, 7)])
def test_padding_path_leaves_divisible_maps_unchanged(grid, ratio, size):
  kw = dict(dim=96, head_dim=48, grid_size=grid, ds_ratio=ratio)
  x = jax.random.normal(jax.random.key(0), (2, size, size, 96))
  plain = attention.HMHSA(**kw)
  variables = plain.init(jax.random.key(1), x, train=False)
  masked = attention.HMHSA(**kw, force_mask=True)
  np.testing.assert_array_equal(plain.apply(variables, x, train=False), masked.apply(variables, x, train=False))


def test_partial_windows_attend_only_to_real_tokens():
  """A 10x10 map in 8x8 windows: a token of a partial window sees only the real tokens of that window."""
  b, h, w, heads, d, g = 1, 10, 10, 2, 4, 8
  qkv = jax.random.normal(jax.random.key(0), (b, h, w, 3 * heads * d))
  out = attention.local_attention(qkv, heads, g)
  q, k, v = np.split(np.asarray(qkv), 3, axis=-1)
  # brute force for the token at (9, 2): its window is rows 8..9, columns 0..7
  rows, cols = slice(8, 10), slice(0, 8)
  for head in range(heads):
    sl = slice(head * d, (head + 1) * d)
    keys = k[0, rows, cols, sl].reshape(-1, d)
    vals = v[0, rows, cols, sl].reshape(-1, d)
    logits = keys @ q[0, 9, 2, sl] / np.sqrt(d)
    p = np.exp(logits - logits.max())
    np.testing.assert_allclose(out[0, 9, 2, sl], (p / p.sum()) @ vals, rtol=1e-5, atol=1e-6)


def test_count_correct_pooling():
  x = jnp.arange(5 * 5, dtype=jnp.float32).reshape(1, 5, 5, 1)
  pooled = layers.avg_pool(x, 2)
  assert pooled.shape == (1, 3, 3, 1)
  np.testing.assert_allclose(pooled[0, 2, 2, 0], 24.0)  # the corner window holds one real pixel
  np.testing.assert_allclose(pooled[0, 0, 2, 0], (4 + 9) / 2)
  np.testing.assert_allclose(pooled[0, 0, 0, 0], (0 + 1 + 5 + 6) / 4)


def test_depthwise_shift_equals_grouped_conv_forward_and_gradients():
  x = jax.random.normal(jax.random.key(0), (2, 9, 11, 16))
  for k in (3, 5):
    shift, conv = layers.DepthwiseConv(k, impl='shift'), layers.DepthwiseConv(k, impl='conv')
    variables = shift.init(jax.random.key(1), x)
    np.testing.assert_allclose(shift.apply(variables, x), conv.apply(variables, x), rtol=1e-5, atol=1e-5)
    cot = jax.random.normal(jax.random.key(2), x.shape)
    grads = [jax.grad(lambda v, x: jnp.sum(m.apply(v, x) * cot), argnums=(0, 1))(variables, x) for m in (shift, conv)]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_clear_errors():
  with pytest.raises(ValueError, match='unknown model .*hatnet_tiny'):
    models.create('hatnet_huge')
  with pytest.raises(ValueError, match='unknown model override'):
    models.create('hatnet_tiny', widths=(1, 2, 3, 4))
  with pytest.raises(ValueError, match='multiple of head_dim'):
    models.create('hatnet_tiny', dims=(50, 96, 240, 384))
  with pytest.raises(ValueError, match='one entry per stage'):
    models.create('hatnet_tiny', depths=(1, 1, 1))
  model = models.create('hatnet_tiny')
  for shape in [(2, 64, 64), (2, 64, 64, 1), (2, 3, 64, 64)]:
    with pytest.raises(ValueError, match='NHWC RGB'):
      model.init(jax.random.key(0), jnp.zeros(shape), train=False)
