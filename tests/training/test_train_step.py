"""The jitted train/eval steps on 8 fake devices with the tiny digits model: NaN/inf handling, gradient
accumulation, EMA, masked eval sums, FSDP layout."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import digits
from hatnet_jax import layout, tasks
from hatnet_jax.training import experiment, steps

NUM_CLASSES = 10
BATCH = 16
SIZE = 16


def _setup(**changes):
  config = digits.get_config('tiny')
  config.update(changes)
  facts = tasks.DatasetFacts(name='synthetic', num_classes=NUM_CLASSES, num_train=90 * config.batch_size,
                             num_eval=0)
  exp = experiment.Experiment.create(config, facts=facts)
  return config, exp.mesh, exp, exp.train_step


@pytest.fixture(scope='module')
def plain():
  config, mesh, exp, step = _setup()
  return config, mesh, exp, step, exp.init_state()


def _batch(mesh, seed=0, nan=False):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32)
  if nan:
    images[3, 2, 2, 0] = np.nan
  sharding = NamedSharding(mesh, P('data'))
  return {'image': jax.device_put(images, sharding),
          'label': jax.device_put(rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32), sharding)}


def _copy(state):
  return jax.tree.map(jnp.copy, state)  # the step donates its input


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def test_nonfinite_loss_freezes_the_state_and_is_reported(plain):
  _, mesh, _, step, state = plain
  good, metrics = step(_copy(state), _batch(mesh))
  assert np.isfinite(float(metrics['train_loss'])) and int(good.nonfinite_step) == -1
  assert int(good.step) == 1

  bad, metrics = step(_copy(good), _batch(mesh, seed=1, nan=True))
  assert not np.isfinite(float(metrics['train_loss']))
  assert int(bad.nonfinite_step) == 1 and int(bad.step) == 2
  jax.tree.map(np.testing.assert_array_equal, _host(bad.params), _host(good.params))
  jax.tree.map(np.testing.assert_array_equal, _host(bad.opt_state), _host(good.opt_state))
  later, _ = step(bad, _batch(mesh, seed=2))  # finite again, but the run is already marked: no update
  assert int(later.nonfinite_step) == 1
  jax.tree.map(np.testing.assert_array_equal, _host(later.params), _host(good.params))


def test_state_is_replicated_or_fsdp_sharded(plain):
  _, mesh, _, _, state = plain
  for leaf in jax.tree.leaves(state):
    assert leaf.sharding.is_fully_replicated and leaf.sharding.mesh.size == 8
  config = digits.get_config('tiny')
  config.shard_params = True
  config.shard_params_min_size = 64
  shardings = layout.state_shardings(jax.eval_shape(lambda s: s, state), mesh, config)
  specs = [s.spec for s in jax.tree.leaves(shardings.params)]
  assert any('data' in spec for spec in specs) and any(spec == P() for spec in specs)


def test_grad_accumulation_matches_the_full_batch_and_ema_follows(plain):
  _, mesh, _, step1, state = plain
  config, _, _, step2 = _setup(grad_accum_steps=2, ema_decay=0.9)
  state = state.replace(ema_params=state.params)
  full, m_full = step1(_copy(state.replace(ema_params=None)), _batch(mesh))
  accum, m_accum = step2(_copy(state), _batch(mesh))
  np.testing.assert_allclose(float(m_accum['train_loss']), float(m_full['train_loss']), rtol=1e-5)
  np.testing.assert_allclose(float(m_accum['grad_norm']), float(m_full['grad_norm']), rtol=1e-4)
  np.testing.assert_allclose(float(m_accum['train_accuracy']), float(m_full['train_accuracy']))
  jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-6), _host(accum.params), _host(full.params))
  expected_ema = jax.tree.map(lambda e, p: config.ema_decay * e + (1 - config.ema_decay) * p,
                              _host(state.params), _host(accum.params))
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7), _host(accum.ema_params),
               expected_ema)


def test_eval_step_sums_ignore_padding(plain):
  _, mesh, exp, _, state = plain
  model = exp.model
  batch = _batch(mesh, seed=3)
  mask = np.ones(BATCH, np.float32)
  mask[-5:] = 0
  batch['mask'] = jax.device_put(mask, NamedSharding(mesh, P('data')))
  sums = exp.eval_step(state.replace(ema_params=state.params), batch)
  sums = dict(sums[''], **{f'ema_{k}': v for k, v in sums['ema_'].items()})
  logits = np.asarray(jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))(state.params, batch['image']))
  labels, keep = np.asarray(batch['label']), mask.astype(bool)
  log_probs = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  top5 = np.argsort(-logits, axis=-1)[:, :5]
  assert float(sums['count']) == keep.sum()
  np.testing.assert_allclose(float(sums['loss']), -log_probs[keep, labels[keep]].sum(), rtol=1e-5)
  assert float(sums['top1']) == (logits.argmax(-1) == labels)[keep].sum()
  assert float(sums['top5']) == (top5 == labels[:, None]).any(-1)[keep].sum()
  assert float(sums['ema_top1']) == float(sums['top1'])  # EMA weights = params here
