"""The task seam's evaluation contract (`Task.eval_outputs` + `Task.eval_accumulator`, `metrics.accumulate`):
a toy task that collects per-example outputs (an example id and a model score, with a validity mask) and a
sum, evaluated by `train.evaluate` over an uneven split (37 examples in global batches of 16: the last one
padded) on 8 devices; the same in 2 processes x 4 devices (slow); and `Sums` keeping classification's
totals exact.

Run as a module (`python -m tests.training.test_eval_contract ADDRESS NUM_PROCESSES PROCESS_ID`), it is one
process of the multi-process test.
"""
import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from configs import digits
from hatnet_jax import layout, tasks
from hatnet_jax.metrics import accumulate
from hatnet_jax.training import experiment, train
from tests import REPO_ROOT

NUM_EVAL = 37  # global batches of 16 on 8 devices: 16 + 16 + 5 real rows (11 padding rows)
EVAL_BATCH = 16
PAD_ID = 1000  # padding rows carry ids from here on (and mask 0): none may reach the metrics
FEATURES = 3


def _features(ids):
  ids = ids.astype(np.float32)
  return np.stack([ids / 10, np.ones_like(ids), np.sin(ids)], axis=-1).astype(np.float32)


class _EvalBatches:
  """One pass of global batches {'id', 'x', 'mask'}, each process feeding its rows (as the real pipelines)."""

  def __init__(self, mesh, log):
    self._sharding, self._lo, self._hi = layout.batch_rows(mesh, EVAL_BATCH, what='toy eval batch')
    self._index, self._log = 0, log

  def __iter__(self):
    return self

  def __next__(self):
    start = self._index * EVAL_BATCH
    if start >= NUM_EVAL:
      raise StopIteration
    self._index += 1
    rows = start + np.arange(EVAL_BATCH)
    real = rows < NUM_EVAL
    ids = np.where(real, rows, PAD_ID + rows).astype(np.int32)
    batch = {'id': ids, 'x': _features(ids), 'mask': real.astype(np.float32)}
    return {k: jax.make_array_from_process_local_data(self._sharding, v[self._lo:self._hi], v.shape)
            for k, v in batch.items()}

  def close(self):
    self._log.append('closed')


class _Score(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    del train
    return nn.Dense(1)(x)[:, 0]


class _ExamplesAndSums:
  """A task's own accumulator composing the two kinds: outputs {'examples': ..., 'sums': ...}."""

  def __init__(self):
    self.examples, self.sums = accumulate.Examples(), accumulate.Sums()

  def add(self, outputs):
    self.examples.add(outputs['examples'])
    self.sums.add(outputs['sums'])

  def result(self):
    rows, totals = self.examples.result(), self.sums.result()
    return {'ids': rows['id'], 'scores': rows['score'], 'count': totals['count'], 'id_sum': totals['id_sum']}


class _Toy(tasks.Task):
  name = 'toy'
  best_metric = 'count'
  log = []

  def dataset_facts(self):
    return tasks.DatasetFacts(name='toy', num_classes=1, num_train=10 * self.config.batch_size, num_eval=NUM_EVAL)

  def train_iterator(self, mesh, start_step):
    raise NotImplementedError

  def eval_iterator(self, mesh):
    return _EvalBatches(mesh, self.log)

  def create_model(self, num_classes):
    return _Score()

  def init_input(self):
    return jax.ShapeDtypeStruct((1, FEATURES), jnp.float32)

  def train_loss(self, model, variables, batch, rng, mutable):
    raise NotImplementedError

  def eval_outputs(self, model, variables, batch):
    score = model.apply(variables, batch['x'], train=False)
    mask = batch['mask']
    return {'examples': {'id': batch['id'], 'score': score, 'mask': mask},
            'sums': {'count': jnp.sum(mask), 'id_sum': jnp.sum(jnp.where(mask > 0, batch['id'], 0))}}

  def eval_accumulator(self):
    return _ExamplesAndSums()

  def describe(self, metrics):
    return f'{metrics["count"]} examples'


def _toy_experiment():
  config = digits.get_config('tiny')
  config.task = 'toy'
  config.ema_decay = 0.9  # evaluates the weights and the EMA ('eval_ema_')
  exp = experiment.Experiment.create(config)
  return exp, exp.init_state()


def _check(metrics, state):
  """What every process must get: all ids once, in order, no padding; the scores of the model; the sums."""
  params = jax.tree.map(np.asarray, jax.device_get(state.params))['Dense_0']
  ids = np.arange(NUM_EVAL)
  scores = _features(ids) @ params['kernel'][:, 0] + params['bias'][0]
  assert sorted(metrics) == ['eval_count', 'eval_ema_count', 'eval_ema_id_sum', 'eval_ema_ids', 'eval_ema_scores',
                             'eval_id_sum', 'eval_ids', 'eval_scores']
  for prefix in ('eval_', 'eval_ema_'):  # EMA weights = params at step 0
    np.testing.assert_array_equal(metrics[f'{prefix}ids'], ids)
    assert metrics[f'{prefix}ids'].dtype == np.int32
    np.testing.assert_allclose(metrics[f'{prefix}scores'], scores, rtol=1e-6, atol=1e-6)
    assert metrics[f'{prefix}count'] == NUM_EVAL and metrics[f'{prefix}count'].dtype == np.float64
    assert metrics[f'{prefix}id_sum'] == ids.sum() and metrics[f'{prefix}id_sum'].dtype == np.int64


@pytest.fixture
def toy(monkeypatch):
  monkeypatch.setitem(tasks.TASKS, 'toy', lambda: _Toy)
  _Toy.log.clear()
  return _toy_experiment()


def test_per_example_outputs_over_an_uneven_split(toy):
  exp, state = toy
  assert exp.mesh.size == 8
  metrics = train.evaluate(exp, state)
  _check(metrics, state)
  assert _Toy.log == ['closed']

  # Out of the jitted step, per-example outputs stay split along the batch (as the batch); sums replicated.
  out = exp.eval_step(state, next(iter(exp.task.eval_iterator(exp.mesh))))
  for prefix in ('', 'ema_'):
    for leaf in jax.tree.leaves(out[prefix]['examples']):
      assert leaf.sharding.spec == jax.sharding.PartitionSpec('data') and not leaf.sharding.is_fully_replicated
    for leaf in jax.tree.leaves(out[prefix]['sums']):
      assert leaf.sharding.is_fully_replicated


def test_examples_keeps_the_masked_rows_in_order_and_checks_shapes():
  seen = []
  acc = accumulate.Examples(lambda rows: seen.append(rows) or {'n': len(rows['v'])}, mask='valid')
  acc.add({'v': np.arange(4), 'w': np.ones((4, 2)), 'valid': np.array([1, 0, 1, 1])})
  acc.add({'v': np.arange(4, 8), 'w': np.zeros((4, 2)), 'valid': np.array([0, 1, 0, 0])})
  assert acc.num_examples == 4 and acc.result() == {'n': 4}
  np.testing.assert_array_equal(seen[0]['v'], [0, 2, 3, 5])
  assert sorted(seen[0]) == ['v', 'w'] and seen[0]['w'].shape == (4, 2)
  with pytest.raises(KeyError, match='valid'):
    acc.add({'v': np.arange(4)})
  with pytest.raises(ValueError, match='leading batch axis'):
    acc.add({'v': np.arange(3), 'valid': np.ones(4)})


def test_examples_compact_sees_each_batchs_real_rows_and_keeps_what_it_returns():
  calls = []

  def compact(rows):  # e.g. Mask R-CNN: probabilities -> RLE lists (objects)
    calls.append(sorted(rows))
    out = {'v': rows['v']}
    out['codes'] = np.empty(len(rows['v']), dtype=object)
    out['codes'][:] = [[int(x)] * int(x) for x in rows['v']]
    return out

  acc = accumulate.Examples(lambda rows: rows, compact=compact)
  acc.add({'v': np.arange(4), 'big': np.ones((4, 3)), 'mask': np.array([1, 0, 1, 1])})
  acc.add({'v': np.arange(4, 8), 'big': np.ones((4, 3)), 'mask': np.array([0, 0, 1, 0])})
  rows = acc.result()
  assert calls == [['big', 'v'], ['big', 'v']] and sorted(rows) == ['codes', 'v']
  np.testing.assert_array_equal(rows['v'], [0, 2, 3, 6])
  assert list(rows['codes']) == [[], [2, 2], [3, 3, 3], [6] * 6]


def test_sums_keep_classifications_totals_exact():
  task = tasks.create(digits.get_config('tiny'))
  acc = task.eval_accumulator()
  assert isinstance(acc, accumulate.Sums)
  rng = np.random.default_rng(0)
  batches = [{'loss': rng.random(dtype=np.float32) * 50, 'top1': np.float32(b), 'top5': np.float32(b + 3),
              'count': np.float32(16)} for b in range(5)]
  for batch in batches:
    acc.add(batch)
  totals = {k: sum(np.float64(b[k]) for b in batches) for k in batches[0]}
  assert acc.result() == task.finalize(totals)
  assert acc.result()['top1'] == 10 / 80 and acc.result()['top5'] == 25 / 80
  big = accumulate.Sums()  # int32 per batch, exact int64 totals past 2^31
  for _ in range(3):
    big.add({'confusion': np.full((2, 2), 2 ** 30, np.int32), 'count': np.int32(1)})
  totals = big.result()
  assert totals['confusion'].dtype == np.int64 and (totals['confusion'] == 3 * 2 ** 30).all()
  assert totals['count'] == 3 and totals['count'].dtype == np.int64


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow  # two processes start, import and compile (~30 s on 2 cores)
def test_two_processes_gather_the_per_example_outputs():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4', JAX_PLATFORMS='cpu',
             TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1')
  address = f'127.0.0.1:{_free_port()}'
  procs = [subprocess.Popen([sys.executable, '-m', 'tests.training.test_eval_contract', address, '2', str(i)],
                            env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-5000:]
  for i, (out, _) in enumerate(outs):
    assert json.loads(out.strip().splitlines()[-1]) == {'process': i, 'processes': 2, 'devices': 8, 'ok': True}


def _main(address, num_processes, process_id):
  """One process of the multi-process test: the toy evaluation, checked on this process."""
  jax.distributed.initialize(address, int(num_processes), int(process_id))
  tasks.TASKS['toy'] = lambda: _Toy
  exp, state = _toy_experiment()
  _check(train.evaluate(exp, state), state)
  print(json.dumps({'process': jax.process_index(), 'processes': jax.process_count(), 'devices': exp.mesh.size,
                    'ok': True}))


if __name__ == '__main__':
  _main(*sys.argv[1:])
