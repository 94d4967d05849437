"""benchmarks/roofline.py and its parts (hlo_index, step_profile, machine_limits): the HLO classification and
profile breakdown on small functions, the limits' micro-benchmarks, and a smoke run."""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tests import REPO_ROOT
sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))
import hlo_index  # noqa: E402
import machine_limits  # noqa: E402
import roofline  # noqa: E402
import step_profile  # noqa: E402


def _compiled_small():
  """A jitted function with a matmul, element-wise work, a reduction and a transpose, compiled."""

  def f(x, w):
    h = jnp.tanh(x @ w) * 2.0 + 1.0
    return h.T.copy(), jnp.sum(h * h, axis=0)

  x = jnp.ones((64, 256), jnp.float32)
  w = jnp.ones((256, 128), jnp.float32)
  compiled = jax.jit(f).lower(x, w).compile()
  return compiled, (x, w)


def test_hlo_index_classifies_and_sizes():
  compiled, _ = _compiled_small()
  hlo = hlo_index.HloIndex(compiled.as_text())
  assert hlo.module.startswith('jit_f')
  classes = {hlo.classify(n) for n, ins in hlo.instrs.items() if ins.computation and ins.opcode != 'parameter'}
  assert hlo_index.COMPUTE in classes
  dots = [n for n, ins in hlo.instrs.items() if ins.opcode in ('dot', 'fusion', 'custom-call')
          and hlo.classify(n) == hlo_index.COMPUTE]
  assert dots
  # The matmul reads x (64x256) and w (256x128) and writes 64x128 f32 (within a fusion it may read more).
  assert max(hlo.bytes(n) for n in dots) >= 4 * (64 * 256 + 256 * 128 + 64 * 128)
  # Names the profiler does not find in the text are classified by their name.
  assert hlo.classify('dot.99999') == hlo_index.COMPUTE
  assert hlo.classify('multiply_add_fusion.99999') == 'element-wise'
  assert hlo_index.kind_of('multiply_add_fusion.37') == 'multiply_add_fusion'
  assert hlo_index.kind_of('copy') == 'copy'


def test_hlo_classes_of_a_handwritten_module():
  text = """HloModule jit_g, entry_computation_layout={()}

%fused_dot (p0: f32[8,16], p1: f32[16,4]) -> f32[8,4] {
  %p0 = f32[8,16]{1,0} parameter(0)
  %p1 = f32[16,4]{1,0} parameter(1)
  ROOT %dot.1 = f32[8,4]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%add_r (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %add.9 = f32[] add(%a, %b)
}

%fused_reduce (p0: f32[8,16]) -> f32[8] {
  %p0.2 = f32[8,16]{1,0} parameter(0)
  %c = f32[] constant(0)
  ROOT %reduce.1 = f32[8]{0} reduce(%p0.2, %c), dimensions={1}, to_apply=%add_r
}

%fused_dus (p0: f32[4,8], p1: f32[1,8], p2: s32[]) -> f32[4,8] {
  %p0.3 = f32[4,8]{1,0} parameter(0)
  %p1.3 = f32[1,8]{1,0} parameter(1)
  %p2.3 = s32[] parameter(2)
  %k = s32[] constant(3)
  %i = s32[] add(%p2.3, %k)
  %z = s32[] constant(0)
  ROOT %dus = f32[4,8]{1,0} dynamic-update-slice(%p0.3, %p1.3, %i, %z)
}

%fused_ew (p0: f32[8,16]) -> f32[8,16] {
  %p0.4 = f32[8,16]{1,0} parameter(0)
  ROOT %tanh.1 = f32[8,16]{1,0} tanh(%p0.4)
}

ENTRY %main (x: f32[8,16], w: f32[16,4], u: f32[4,8], v: f32[1,8], j: s32[]) -> (f32[8,4], f32[8]) {
  %x = f32[8,16]{1,0} parameter(0)
  %w = f32[16,4]{1,0} parameter(1)
  %u = f32[4,8]{1,0} parameter(2)
  %v = f32[1,8]{1,0} parameter(3)
  %j = s32[] parameter(4)
  %ynn_fusion.3 = f32[8,4]{1,0} fusion(%x, %w), kind=kCustom, calls=%fused_dot, metadata={op_name="jit(g)/jvp(Net)/Net.fc/dot_general"}
  %ynn_fusion.4 = f32[8]{0} fusion(%x), kind=kCustom, calls=%fused_reduce, metadata={op_name="jit(g)/reduce_sum"}
  %bitcast_dynamic-update-slice_fusion.2 = f32[4,8]{1,0} fusion(%u, %v, %j), kind=kLoop, calls=%fused_dus
  %tanh_fusion = f32[8,16]{1,0} fusion(%x), kind=kLoop, calls=%fused_ew
  %wrapped_add = s32[] add(%j, %j)
  ROOT %t = (f32[8,4]{1,0}, f32[8]{0}) tuple(%ynn_fusion.3, %ynn_fusion.4)
}
"""
  hlo = hlo_index.HloIndex(text)
  assert hlo.module == 'jit_g'
  assert hlo.classify('ynn_fusion.3') == hlo_index.COMPUTE  # a YNNPACK fusion with a dot
  assert hlo.classify('ynn_fusion.4') == 'reduction'  # a YNNPACK fusion with a reduce
  assert hlo.classify('bitcast_dynamic-update-slice_fusion.2') == 'data movement'  # index arithmetic left out
  assert hlo.classify('tanh_fusion') == 'element-wise'
  assert hlo.classify('wrapped_add') == 'element-wise'  # scalar work
  assert hlo.bytes('ynn_fusion.3') == 4 * (8 * 4 + 8 * 16 + 16 * 4)
  assert hlo.bytes('bitcast_dynamic-update-slice_fusion.2') == 4 * (32 + 32 + 8 + 1)
  assert hlo.op_name('ynn_fusion.3') == 'fwd Net/Net.fc/dot_general'
  assert hlo.op_name('ynn_fusion.4') == 'step: reduce_sum'
  assert hlo.op_name('tanh_fusion') == '(inserted by XLA)'
  assert hlo.shape('ynn_fusion.3') == 'f32[8,4]' and hlo.shape('wrapped_add') == 's32[]'
  assert hlo_index.short_op_name('jit(train_step)/transpose(jvp(HATNet))/HATNet.features/stage2/while/body/'
                                'closed_call/blocks/conv/fc2') == 'bwd HATNet/HATNet.features/stage2/blocks/conv/fc2'


def test_profile_step_breaks_down_kernel_time():
  compiled, (x, w) = _compiled_small()
  hlo = hlo_index.HloIndex(compiled.as_text())
  out = step_profile.profile_step(lambda: jax.block_until_ready(compiled(x, w)), hlo, top=5)
  assert out['num_kernel_events'] > 0 and out['kernel_thread_s'] > 0
  assert abs(sum(out['class_shares'].values()) - 1.0) < 1e-6
  assert set(out['class_shares']) == {hlo_index.COMPUTE, *hlo_index.MEMORY_CLASSES}
  assert 0 < len(out['top_kinds']) <= 5
  assert abs(sum(k['share'] for k in out['top_kinds']) - 1.0) < 1e-6 or len(out['top_kinds']) == 5
  assert out['class_shares'][hlo_index.COMPUTE] > 0
  assert all(k['shape'] and k['costliest_ms'] > 0 for k in out['top_kinds'])


def test_compiled_cost_is_per_device():
  """bench_step multiplies the compiled (SPMD-partitioned) cost analysis by the device count."""
  devices = jax.devices()
  mesh = Mesh(np.asarray(devices), ('data',))
  x = jax.ShapeDtypeStruct((8 * len(devices), 256), jnp.float32, sharding=NamedSharding(mesh, P('data')))
  w = jax.ShapeDtypeStruct((256, 256), jnp.float32, sharding=NamedSharding(mesh, P()))
  lowered = jax.jit(lambda x, w: x @ w).lower(x, w)
  flops = 2 * x.shape[0] * 256 * 256
  assert lowered.cost_analysis()['flops'] == pytest.approx(flops, rel=0.01)
  assert lowered.compile().cost_analysis()['flops'] * len(devices) == pytest.approx(flops, rel=0.01)


def test_limits_micro_benchmarks_run():
  assert set(machine_limits.jax_matmul_gflops([64], repeats=1)) == {64}
  stream = machine_limits.stream_gbs(1, repeats=1)
  assert stream['scale_add'] > 0 and stream['copy'] > 0


@pytest.mark.slow  # one compilation of the trainer's step at 32 px: ~1-2 min here
def test_roofline_smallest_setting(capsys, tmp_path):
  out = tmp_path / 'roofline.jsonl'
  roofline.main(['--model=hatnet_tiny', '--image_size=32', '--batch_size=1', '--steps=1', '--warmup=0',
                 '--matmul_sizes=128', '--stream_mib=4', '--repeats=1', '--skip_fused_bytes', '--top=5',
                 f'--json_out={out}'])
  printed = capsys.readouterr().out
  row = json.loads(out.read_text().splitlines()[0])
  assert json.loads(printed.strip().splitlines()[-1]) == row
  assert row['num_devices'] == 8  # tests/conftest.py
  for key in ('peak_gflops', 'bandwidth_gbs', 'stream_scale_add_gbs', 'stream_copy_gbs', 'flops_per_step',
              'bytes_per_step', 'step_s', 'images_per_s', 'achieved_gflops', 'achieved_gbs',
              'intensity_flops_per_byte', 'ceiling_gflops', 'fraction_of_peak', 'kernel_thread_s'):
    assert row[key] > 0, key
  assert row['ceiling_gflops'] <= row['peak_gflops'] + 1e-9
  assert row['bound'] in ('memory', 'compute')
  assert row['flops_per_step'] == row['flops_lowered']  # --skip_fused_bytes
  assert abs(sum(row['class_shares'].values()) - 1.0) < 1e-6
  assert len(row['top_kinds']) == 5 and all(k['ms'] > 0 for k in row['top_kinds'])
  for text in ('peak f32 matmul, JAX', 'memory bandwidth', 'arithmetic intensity', 'roofline ceiling',
               '| matmul/conv |', 'memory-bound: element-wise', 'fusion kinds'):
    assert text in printed, text
