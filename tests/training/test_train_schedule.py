"""Learning-rate schedule, durations and the optimizer of the PVT recipe (no data, no compilation of the model)."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import hatnet_large, hatnet_tiny
from hatnet_jax import models
from hatnet_jax.training import optim, schedule

IMAGENET_TRAIN = 1_281_167


def test_to_steps_epochs_or_steps():
  assert schedule.to_steps(300, None, 1251) == 375_300
  assert schedule.to_steps(300, 1000, 1251) == 1000  # a step count, when set, wins
  assert schedule.to_steps(None, 0, 1251) == 0
  with pytest.raises(ValueError, match='either'):
    schedule.to_steps(None, None, 10)
  with pytest.raises(ValueError, match='>= 0'):
    schedule.to_steps(-1, None, 10)
  assert schedule.steps_per_epoch(IMAGENET_TRAIN, 1024) == 1251
  assert schedule.steps_per_epoch(10, 1024) == 1


def test_recipe_learning_rate_at_chosen_steps():
  c = hatnet_tiny.get_config()
  per_epoch = schedule.steps_per_epoch(IMAGENET_TRAIN, c.batch_size)
  lr = schedule.create_learning_rate_fn(c, per_epoch)
  peak = 5e-4 * 1024 / 512
  assert schedule.peak_learning_rate(c) == pytest.approx(peak)
  warmup, total = 5 * per_epoch, 300 * per_epoch
  expected = {
      0: 1e-6,  # linear warmup from 1e-6 ...
      warmup // 2: 1e-6 + (peak - 1e-6) * (warmup // 2) / warmup,
      warmup: peak,  # ... to the scaled peak over 5 epochs,
      warmup + (total - warmup) // 2: 1e-5 + (peak - 1e-5) * 0.5,  # cosine (half way) ...
      warmup + (total - warmup) // 4: 1e-5 + (peak - 1e-5) * 0.5 * (1 + math.cos(math.pi / 4)),
      total: 1e-5,  # ... down to 1e-5 at the end.
  }
  for step, value in expected.items():
    assert float(lr(step)) == pytest.approx(value, rel=1e-4), step
  values = np.asarray([float(lr(s)) for s in range(warmup, total, 997)])
  assert np.all(np.diff(values) <= 0)  # monotone after the warmup


def test_learning_rate_scales_with_batch_and_steps_override():
  c = hatnet_tiny.get_config()
  c.batch_size = 256
  c.num_steps = 100
  c.warmup_steps = 10
  lr = schedule.create_learning_rate_fn(c, 5)
  assert float(lr(10)) == pytest.approx(5e-4 / 2)
  assert float(lr(100)) == pytest.approx(1e-5)


def _toy_params():
  return {
      'stem_conv1': {'kernel': jnp.ones((3, 3, 3, 8)), 'bias': jnp.ones((8,))},
      'stem_norm': {'scale': jnp.ones((8,)), 'bias': jnp.ones((8,))},
      'stage1': {'blocks': {'attn': {'qkv': {'kernel': jnp.ones((2, 8, 24)), 'bias': jnp.ones((2, 24))}},
                            'conv': {'dwconv': {'kernel': jnp.ones((2, 3, 3, 1, 8))}}}},
      'head': {'kernel': jnp.ones((8, 10)), 'bias': jnp.ones((10,))},
  }


def test_weight_decay_mask_kernels_only():
  mask = optim.weight_decay_mask(_toy_params())
  assert mask['stem_conv1'] == {'kernel': True, 'bias': False}
  assert mask['stem_norm'] == {'scale': False, 'bias': False}
  # scanned blocks: stacked biases are 2-D but still not decayed; depthwise kernels are.
  assert mask['stage1']['blocks']['attn']['qkv'] == {'kernel': True, 'bias': False}
  assert mask['stage1']['blocks']['conv']['dwconv'] == {'kernel': True}
  assert mask['head'] == {'kernel': True, 'bias': False}


def test_weight_decay_mask_on_the_real_model():
  model = models.create('hatnet_tiny', num_classes=10)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))
  params = params['params']
  flat = jax.tree_util.tree_flatten_with_path(optim.weight_decay_mask(params))[0]
  decayed = {jax.tree_util.keystr(p) for p, m in flat if m}
  not_decayed = {jax.tree_util.keystr(p) for p, m in flat if not m}
  assert decayed and not_decayed
  assert all(name.endswith("['kernel']") for name in decayed)
  assert not any(name.endswith("['kernel']") for name in not_decayed)
  assert any('norm' in name for name in not_decayed) and any("['bias']" in name for name in not_decayed)


def test_adamw_decays_kernels_only_with_recipe_hyperparameters():
  c = hatnet_tiny.get_config()
  lr = 1e-3
  tx = optim.create_optimizer(c, optax.constant_schedule(lr))
  params = _toy_params()
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, state, params)  # zero gradients: only the decoupled weight decay moves params
  mask = optim.weight_decay_mask(params)
  for u, m in zip(jax.tree.leaves(updates), jax.tree.leaves(mask)):
    np.testing.assert_allclose(u, -lr * 0.05 * 1.0 if m else 0.0, rtol=1e-6)
  # AdamW first step with betas (0.9, 0.999), eps 1e-8: the update is lr * sign(g) (bias-corrected).
  grads = jax.tree.map(lambda p: 0.3 * jnp.ones_like(p), params)
  updates, _ = tx.update(grads, state, params)
  np.testing.assert_allclose(updates['stem_norm']['scale'], -lr * 0.3 / (0.3 + 1e-8), rtol=2e-5)


def test_large_clips_gradients():
  c = hatnet_large.get_config()
  assert c.grad_clip_norm == 1.0
  tx = optim.create_optimizer(c, optax.constant_schedule(1e-3))
  params = {'w': {'kernel': jnp.zeros((4,))}}
  state = tx.init(params)
  huge = {'w': {'kernel': jnp.full((4,), 1e6)}}  # global norm 2e6 -> clipped to 1: 0.5 per element
  _, new_state = tx.update(huge, state, params)
  mu = optax.tree_utils.tree_get(new_state, 'mu')
  np.testing.assert_allclose(mu['w']['kernel'], (1 - 0.9) * 0.5, rtol=1e-5)
  tiny = hatnet_tiny.get_config()
  assert tiny.grad_clip_norm == 0.0
  tx = optim.create_optimizer(tiny, optax.constant_schedule(1e-3))
  _, new_state = tx.update(huge, tx.init(params), params)
  np.testing.assert_allclose(optax.tree_utils.tree_get(new_state, 'mu')['w']['kernel'], 1e5, rtol=1e-5)


def _step_config(**kw):
  c = ml_collections.ConfigDict(dict(base_lr=1e-4, batch_size=16, lr_base_batch=16, num_epochs=None, num_steps=120,
                                     warmup_epochs=None, warmup_steps=50, warmup_lr=0.0, min_lr=0.0,
                                     lr_schedule='step', lr_milestone_epochs=(8, 11), lr_milestone_steps=None,
                                     lr_decay_factor=0.1, warmup_ratio=0.001))
  c.update(kw)
  return c


def test_step_schedule_hand_values():
  """The mmdet 1x policy at 10 steps per epoch: warmup from 0.001 x peak over 50 steps, x0.1 at epochs 8, 11."""
  fn = schedule.create_learning_rate_fn(_step_config(), num_steps_per_epoch=10)
  expect = {0: 1e-7, 25: 1e-4 * (0.001 + 0.999 * 0.5), 50: 1e-4, 79: 1e-4, 80: 1e-5, 109: 1e-5, 110: 1e-6}
  for step, lr in expect.items():
    np.testing.assert_allclose(float(fn(step)), lr, rtol=1e-6, err_msg=f'step {step}')
  fn = schedule.create_learning_rate_fn(_step_config(lr_milestone_steps=(30,)), num_steps_per_epoch=10)
  # A milestone inside the warmup: the warmup factor multiplies the decayed rate (mmcv).
  np.testing.assert_allclose(float(fn(40)), 1e-5 * (0.001 + 0.999 * 0.8), rtol=1e-6)
  with pytest.raises(ValueError, match='lr_milestone'):
    schedule.create_learning_rate_fn(_step_config(lr_milestone_epochs=None), num_steps_per_epoch=10)


def test_step_schedule_equals_mmengine():
  """Against mmengine's LinearLR + MultiStepLR by iteration. PVT's recipe ran on mmcv 1.x, whose linear warmup
  over N iterations reaches the peak at iteration N; mmengine's LinearLR(end=N) reaches it at N - 1, so the
  mmcv 1.x warmup is mmengine's with end=N + 1 (mmdet 3.x's own configs, end=500, ramp one step faster)."""
  torch = pytest.importorskip('torch')
  scheduler = pytest.importorskip('mmengine.optim.scheduler')
  per_epoch, warmup = 7, 20
  fn = schedule.create_learning_rate_fn(_step_config(warmup_steps=warmup), num_steps_per_epoch=per_epoch)
  opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
  scheds = [scheduler.LinearLR(opt, start_factor=0.001, by_epoch=False, begin=0, end=warmup + 1),
            scheduler.MultiStepLR(opt, milestones=[8 * per_epoch, 11 * per_epoch], gamma=0.1, by_epoch=False)]
  for step in range(12 * per_epoch):
    np.testing.assert_allclose(float(fn(step)), opt.param_groups[0]['lr'], rtol=1e-5, err_msg=f'step {step}')
    opt.step()
    for s in scheds:
      s.step()
