"""Checkpoint manager (keep last K + best), restore onto fewer devices / other shardings, pretrained loading,
and the SIGTERM watcher. Small pytrees only: nothing here compiles the model."""
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import default
from hatnet_jax import layout
from hatnet_jax.training import checkpoint, optim, preemption, steps


def _state(mesh, config, seed=0):
  params = {
      'stem': {'kernel': jax.random.normal(jax.random.PRNGKey(seed), (3, 3, 3, 16)), 'bias': jnp.arange(16.0)},
      'head': {'kernel': jax.random.normal(jax.random.PRNGKey(seed + 1), (16, 10)), 'bias': jnp.zeros(10)},
  }
  tx = optim.create_optimizer(config, optax.constant_schedule(1e-3))
  opt_state = tx.init(params)
  # one update so the optimizer state is not all zeros
  _, opt_state = tx.update(jax.tree.map(jnp.ones_like, params), opt_state, params)
  state = steps.TrainState(step=jnp.int32(7), params=params, opt_state=opt_state, ema_params=params,
                           rng=jax.random.PRNGKey(42), nonfinite_step=jnp.int32(-1))
  shardings = layout.state_shardings(state, mesh, config)
  return jax.device_put(state, shardings), shardings


def _abstract(state, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def _assert_bitwise_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_keeps_last_k_and_best(tmp_path):
  mesh = layout.create_mesh()
  state, _ = _state(mesh, default.get_config())
  mngr = checkpoint.CheckpointManager(str(tmp_path / 'ck'), max_to_keep=2, keep_best=True)
  top1 = {10: 0.3, 20: 0.9, 30: None, 40: 0.5, 50: None}
  for step, acc in top1.items():
    assert mngr.save(step, state, metrics=None if acc is None else {'top1': acc})
  assert not mngr.save(50, state)  # an existing step is not written twice
  mngr.wait_until_finished()
  assert list(mngr.all_steps()) == [20, 40, 50]  # best (20) + last two
  mngr.close()
  no_best = checkpoint.CheckpointManager(str(tmp_path / 'ck2'), max_to_keep=2, keep_best=False)
  for step, acc in top1.items():
    no_best.save(step, state, metrics=None if acc is None else {'top1': acc})
  no_best.close()
  assert list(checkpoint.CheckpointManager(str(tmp_path / 'ck2'), max_to_keep=2, keep_best=False).all_steps()) \
      == [40, 50]


def test_restore_from_8_devices_onto_4_and_onto_fsdp(tmp_path):
  config = default.get_config()
  mesh8 = layout.create_mesh()
  assert mesh8.size == 8
  state, _ = _state(mesh8, config)
  mngr = checkpoint.CheckpointManager(str(tmp_path / 'ck'), max_to_keep=3, keep_best=False)
  mngr.save(7, state)
  mngr.close()

  mesh4 = layout.create_mesh(jax.devices()[:4])
  target, shardings4 = _state(mesh4, config, seed=5)
  restored = checkpoint.CheckpointManager(str(tmp_path / 'ck'), max_to_keep=3, keep_best=False).restore(
      _abstract(target, shardings4))
  assert isinstance(restored, steps.TrainState)
  _assert_bitwise_equal(restored, state)
  for leaf in jax.tree.leaves(restored):
    assert leaf.sharding.mesh.size == 4 and leaf.sharding.is_fully_replicated

  config.shard_params = True
  config.shard_params_min_size = 16
  target, fsdp = _state(mesh4, config, seed=5)
  assert fsdp.params['stem']['kernel'].spec == P(None, None, None, 'data')  # 16 channels over 4 devices
  assert fsdp.params['head']['kernel'].spec == P('data', None)
  assert fsdp.params['head']['bias'].is_fully_replicated  # 10 elements: below the minimum size
  restored = checkpoint.CheckpointManager(str(tmp_path / 'ck'), max_to_keep=3, keep_best=False).restore(
      _abstract(target, fsdp))
  _assert_bitwise_equal(restored, state)
  assert restored.params['stem']['kernel'].sharding.spec == P(None, None, None, 'data')


def test_load_params_keeps_a_fresh_head_for_other_classes(tmp_path):
  mesh = layout.create_mesh()
  replicated = NamedSharding(mesh, P())
  pretrained = {'stem': {'kernel': jnp.full((3, 3, 3, 16), 2.0), 'bias': jnp.full((16,), 3.0)},
                'head': {'kernel': jnp.ones((16, 1000)), 'bias': jnp.ones((1000,))}}
  ckptr = ocp.StandardCheckpointer()  # as hatnet_jax.tools.convert writes it
  ckptr.save(str(tmp_path / 'converted'), {'params': pretrained})
  ckptr.wait_until_finished()

  fresh = jax.device_put({'stem': {'kernel': jnp.zeros((3, 3, 3, 16)), 'bias': jnp.zeros((16,))},
                          'head': {'kernel': jnp.full((16, 10), 7.0), 'bias': jnp.zeros((10,))}}, replicated)
  loaded = checkpoint.load_params(str(tmp_path / 'converted'), fresh)
  np.testing.assert_array_equal(loaded['stem']['kernel'], 2.0)
  np.testing.assert_array_equal(loaded['stem']['bias'], 3.0)
  np.testing.assert_array_equal(loaded['head']['kernel'], 7.0)  # 10 classes: the head stays fresh
  assert loaded['stem']['kernel'].sharding == replicated

  same_head = jax.device_put(jax.tree.map(jnp.zeros_like, pretrained), replicated)
  loaded = checkpoint.load_params(str(tmp_path / 'converted'), same_head, require_all=True)
  _assert_bitwise_equal(loaded, pretrained)
  with pytest.raises(ValueError, match='head/'):
    checkpoint.load_params(str(tmp_path / 'converted'), fresh, require_all=True)  # eval: no fresh heads
  bad = dict(fresh, stem={'kernel': jnp.zeros((3, 3, 3, 8)), 'bias': jnp.zeros((16,))})
  with pytest.raises(ValueError, match='stem/kernel of shape'):
    checkpoint.load_params(str(tmp_path / 'converted'), bad)
  with pytest.raises(FileNotFoundError):
    checkpoint.load_params(str(tmp_path / 'missing'), fresh)


def test_load_params_from_a_training_checkpoint(tmp_path):
  mesh = layout.create_mesh()
  state, _ = _state(mesh, default.get_config())
  mngr = checkpoint.CheckpointManager(str(tmp_path / 'ck'), max_to_keep=1, keep_best=False)
  mngr.save(7, state)
  mngr.close()
  target = jax.tree.map(jnp.zeros_like, state.params)
  loaded = checkpoint.load_params(os.path.join(tmp_path, 'ck', '7', checkpoint.STATE_ITEM), target,
                                  require_all=True)
  _assert_bitwise_equal(loaded, state.params)


def test_stop_watcher_catches_sigterm_and_counts_ctrl_c(caplog):
  before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
  with preemption.StopWatcher() as watcher:
    assert not watcher.reached(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert watcher.reached(2) and not watcher.interrupted
  with preemption.StopWatcher() as watcher:
    os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the step in progress finishes
    assert watcher.reached(3) and watcher.interrupted
    os.kill(os.getpid(), signal.SIGINT)  # the second press is ignored while saving, with a line saying so
    assert any('still saving' in r.getMessage() for r in caplog.records)
  assert {sig: signal.getsignal(sig) for sig in before} == before


def _damage(step_dir, how):
  files = sorted(os.path.join(root, f) for root, _, names in os.walk(step_dir) for f in names)
  for f in files:
    if how == 'truncate' and os.path.getsize(f) > 64:
      with open(f, 'r+b') as fh:
        fh.truncate(os.path.getsize(f) // 2)
    elif how == 'delete' and ('ocdbt' in f or f.endswith('.data')):
      os.remove(f)
    elif how == 'json' and f.lower().endswith('metadata'):
      with open(f, 'w') as fh:
        fh.write('{garbage')


@pytest.mark.parametrize('how', ['truncate', 'delete', 'json'])
def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_previous_one_restored(tmp_path, how, caplog):
  config = default.get_config()
  mesh = layout.create_mesh()
  states = {s: _state(mesh, config, seed=s) for s in (1, 2)}
  directory = str(tmp_path / 'ck')
  mngr = checkpoint.CheckpointManager(directory, max_to_keep=3, keep_best=False)
  for step, (state, _) in states.items():
    mngr.save(step, state)
  mngr.close()
  _damage(os.path.join(directory, '2'), how)

  mngr = checkpoint.CheckpointManager(directory, max_to_keep=3, keep_best=False)
  restored = mngr.restore_latest(_abstract(*states[1]))
  _assert_bitwise_equal(restored, states[1][0])
  assert sorted(os.listdir(directory)) == ['1', '2.damaged']  # moved aside, never deleted
  assert list(mngr.all_steps()) == [1]
  warnings = [r.getMessage() for r in caplog.records if 'could not be restored' in r.getMessage()]
  assert len(warnings) == 1 and 'step 2' in warnings[0] and '2.damaged' in warnings[0]
  assert len(warnings[0]) < 600  # one line: the error's first line, not tensorstore's spec dump
  mngr.close()

  # When nothing restores, the error lists every step tried.
  _damage(os.path.join(directory, '1'), how)
  mngr = checkpoint.CheckpointManager(directory, max_to_keep=3, keep_best=False)
  with pytest.raises(checkpoint.NoUsableCheckpointError, match=r'(?s)tried:.*step 1: .*1\.damaged'):
    mngr.restore_latest(_abstract(*states[1]))
  assert sorted(os.listdir(directory)) == ['1.damaged', '2.damaged']
  assert mngr.restore_latest(_abstract(*states[1])) is None  # nothing left: a fresh start
  mngr.close()


@pytest.mark.slow  # ~30 s
def test_a_classifier_checkpoint_loads_into_a_segmentation_backbone(tmp_path):
  from hatnet_jax import models  # pylint: disable=g-import-not-at-top
  from hatnet_jax.tools import convert  # pylint: disable=g-import-not-at-top
  small = dict(dims=(8, 16), head_dim=8, depths=(1, 1), expansions=(2, 2), grid_sizes=(2, 1), ds_ratios=(2, 1),
               kernel_sizes=(3, 3), stem_dim=8)
  x = jnp.zeros((1, 32, 32, 3))
  classifier = models.create('hatnet_tiny', num_classes=10, **small)
  cls_params = jax.jit(lambda: classifier.init(jax.random.PRNGKey(1), x, train=False))()['params']
  convert.save(cls_params, str(tmp_path / 'cls'))
  seg = models.create('semfpn_hatnet_tiny', num_classes=5, neck_channels=8, head_channels=8, **small)
  seg_params = jax.jit(lambda: seg.init(jax.random.PRNGKey(2), x, train=False))()['params']
  loaded = checkpoint.load_params(str(tmp_path / 'cls'), seg_params)
  _assert_bitwise_equal(loaded['backbone'], models.backbone_params_from_classifier(cls_params))
  _assert_bitwise_equal(loaded['neck'], seg_params['neck'])  # the neck and head start fresh
  _assert_bitwise_equal(loaded['decode_head'], seg_params['decode_head'])
  with pytest.raises(ValueError, match='holds only the backbone of the model, but evaluation needs every'):
    checkpoint.load_params(str(tmp_path / 'cls'), seg_params, require_all=True)


def test_checkpoints_from_before_the_task_seam_restore(tmp_path):
  """A TrainState saved before `model_state` existed (the digits demo's checkpoints of earlier versions)."""
  import flax  # pylint: disable=g-import-not-at-top

  @flax.struct.dataclass
  class OldTrainState:  # the fields and order of the earlier hatnet_jax.training.train.TrainState
    step: jax.Array
    params: dict
    opt_state: tuple
    ema_params: dict
    rng: jax.Array
    nonfinite_step: jax.Array

  config = default.get_config()
  mesh = layout.create_mesh()
  state, shardings = _state(mesh, config)
  old = OldTrainState(step=state.step, params=state.params, opt_state=state.opt_state, ema_params=state.ema_params,
                      rng=state.rng, nonfinite_step=state.nonfinite_step)
  mngr = checkpoint.CheckpointManager(str(tmp_path / 'ck'), max_to_keep=3, keep_best=False)
  mngr.save(7, old)
  mngr.close()
  mngr = checkpoint.CheckpointManager(str(tmp_path / 'ck'), max_to_keep=3, keep_best=False)
  restored = mngr.restore_latest(_abstract(state, shardings))
  assert isinstance(restored, steps.TrainState) and restored.model_state == {}
  _assert_bitwise_equal(restored, state)
  # An intact checkpoint of another model is an error, not damage: nothing is moved aside.
  other = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[:-1] + (x.shape[-1] + 1,) if x.ndim else x.shape, x.dtype,
                                                      sharding=x.sharding), _abstract(state, shardings))
  with pytest.raises(checkpoint.CheckpointMismatchError, match='does not fit this run'):
    mngr.restore_latest(other)
  assert sorted(os.listdir(tmp_path / 'ck')) == ['7']
  mngr.close()


def test_init_from_a_classifier_of_other_widths_names_the_path_and_the_parameter(tmp_path):
  """A segmentation run started from a classifier whose backbone has other widths: one message naming the
  checkpoint, the first parameter that does not fit and both shapes (not a traceback into orbax)."""
  from hatnet_jax import models  # pylint: disable=g-import-not-at-top
  from hatnet_jax.tools import convert  # pylint: disable=g-import-not-at-top
  small = dict(head_dim=8, depths=(1, 1), expansions=(2, 2), grid_sizes=(2, 1), ds_ratios=(2, 1),
               kernel_sizes=(3, 3), stem_dim=8)
  x = jnp.zeros((1, 32, 32, 3))
  classifier = models.create('hatnet_tiny', num_classes=10, dims=(8, 16), **small)
  cls_params = jax.jit(lambda: classifier.init(jax.random.PRNGKey(1), x, train=False))()['params']
  convert.save(cls_params, str(tmp_path / 'cls'))
  seg = models.create('semfpn_hatnet_tiny', num_classes=5, neck_channels=8, head_channels=8, dims=(16, 32), **small)
  seg_params = jax.eval_shape(lambda: seg.init(jax.random.PRNGKey(2), x, train=False))['params']
  seg_params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), seg_params)
  with pytest.raises(ValueError, match=rf'init_from={tmp_path / "cls"}: the model parameter backbone/\S+ of shape '
                                       r'\(.*\) is of shape \(.*\) in the checkpoint; was it written for another model'):
    checkpoint.load_params(str(tmp_path / 'cls'), seg_params)
