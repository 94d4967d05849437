"""benchmarks/stage_costs.py: the per-part costs of a small HAT-Net add up to XLA's cost of the whole train
step and forward, each block's parts to the block, and the roofline arithmetic on hand-made parts."""
import os
import sys

import jax
import jax.numpy as jnp
import pytest

from tests import REPO_ROOT
sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))
import stage_costs  # noqa: E402

pytest.importorskip('ml_collections')  # the trainer's config

# Tolerances of (whole - sum of parts) / whole. FLOPs: the parts miss only the step's scalar work (RNG
# splits, the learning rate, the step counter) and RNG details (Flax folds names into the dropout keys).
# Bytes: XLA's unfused count also differs where a part's boundary materialises a value the whole program
# passes on (a cast, a reshape).
FLOPS_TOL, BYTES_TOL = 0.01, 0.05


@pytest.fixture(scope='module')
def small():
  return stage_costs.main(['--dims=16,32,48,64', '--head_dim=16', '--depths=1,1,2,1', '--batch_size=2',
                           '--image_size=64'])


@pytest.mark.parametrize('mode', ['train', 'fwd'])
def test_parts_sum_to_the_whole(small, mode):
  s = small['roofline'][mode]
  assert s['whole']['flops'] > 0
  assert abs(s['other_fraction']['flops']) < FLOPS_TOL, s['other_fraction']
  assert abs(s['other_fraction']['bytes_xla']) < BYTES_TOL, s['other_fraction']


@pytest.mark.parametrize('mode', ['train', 'fwd'])
def test_block_parts_sum_to_the_block(small, mode):
  for stage, check in small['block_checks'].items():
    whole, parts = check[mode]['whole'], check[mode]['parts']
    assert abs(parts['flops'] / whole['flops'] - 1) < FLOPS_TOL, (stage, whole, parts)
    assert abs(parts['bytes_xla'] / whole['bytes_xla'] - 1) < BYTES_TOL, (stage, whole, parts)


def test_rows_by_hand(small):
  rows = {r['name']: r for r in small['rows']}
  assert rows['stage3/attn/qkv']['count'] == 2  # depth 2
  # stem conv1: 2 x 64 x 64 x 3 f32 in, 2 x 32 x 32 x 16 bf16 out, 3x3x3x16 + 16 weights at bf16
  i, o, w = 2 * 64 * 64 * 3 * 4, 2 * 32 * 32 * 16 * 2, (27 * 16 + 16) * 2
  conv1 = rows['stem/conv1']
  assert conv1['fwd']['bytes_min'] == i + o + w
  assert conv1['train']['bytes_min'] == 2 * i + 2 * o + 3 * w  # no image gradient
  # the qkv matmul of stage 1 (16 x 16 map, 16 channels -> 48): 2 M N K, plus the bias and the casts
  m = 2 * 16 * 16
  mnk = m * 16 * 48
  assert 2 * mnk <= rows['stage1/attn/qkv']['fwd']['flops'] <= 2 * mnk + 4 * m * (16 + 48)
  # the backward of a matmul: two more matmuls of the same size
  assert rows['stage1/attn/qkv']['train']['flops'] >= 3 * 2 * mnk


def test_roofline_arithmetic():
  peak, bw = stage_costs.PEAK_FLOPS, stage_costs.BANDWIDTH['h100']
  compute = dict(flops=peak * 1e-3, bytes_xla=bw * 1e-2, bytes_min=bw * 1e-4)  # 1 ms of compute
  memory = dict(flops=peak * 1e-5, bytes_xla=bw * 1e-2, bytes_min=bw * 2e-3)  # 2 ms of traffic
  assert stage_costs.bound_s(compute, bw) == pytest.approx(1e-3)
  assert stage_costs.bound_s(memory, bw) == pytest.approx(2e-3)
  rows = [dict(name='a', kind='matmul', count=2, fwd=compute, train=compute),
          dict(name='b', kind='GroupNorm', count=1, fwd=None, train=memory)]
  whole = {'train': dict(flops=2 * compute['flops'] + memory['flops'], bytes_xla=3 * bw * 1e-2),
           'fwd': dict(flops=2 * compute['flops'], bytes_xla=2 * bw * 1e-2)}
  r = stage_costs.roofline(rows, whole, 'train')
  assert r['other']['flops'] == pytest.approx(0.0, abs=1.0)
  assert r['h100']['predicted_ms'] == pytest.approx(4.0)  # 2 x 1 ms + 2 ms
  assert r['h100']['mfu_ceiling'] == pytest.approx(whole['train']['flops'] / peak / 4e-3)
  kinds = stage_costs.by_kind(rows, 'fwd')
  assert set(kinds) == {'matmul'} and kinds['matmul']['h100_ms'] == pytest.approx(2.0)


def test_nbytes():
  tree = {'a': jax.ShapeDtypeStruct((3, 4), jnp.float32), 'b': jax.ShapeDtypeStruct((5,), jnp.bfloat16)}
  assert stage_costs.nbytes(tree) == 48 + 10
  assert stage_costs.nbytes(tree, 2) == 24 + 10
