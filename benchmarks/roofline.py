"""This machine's compute and memory limits, and where a model's train step stands against them (roofline).

    python benchmarks/roofline.py --model=hatnet_tiny
    python benchmarks/roofline.py --model=hatnet_small --batch_size=32 --skip_profile
    python benchmarks/roofline.py --model=hatnet_tiny --image_size=32 --batch_size=2 --steps=1 \\
        --matmul_sizes=256 --stream_mib=16 --skip_fused_bytes          # a smoke run

1. Limits. Peak: a float32 matmul (jit of jnp.dot on --matmul_sizes square matrices, best of --repeats) on
   the default device, which on CPU uses every core of the process's thread pool; torch.mm on the same
   sizes for reference when torch is importable. Memory bandwidth: streaming kernels over an f32 array
   of --stream_mib MiB, y = x * a + b written in place (the input is donated, so no fresh pages are
   touched) and a copy into a donated buffer, counting the bytes read plus written; the larger of the
   two is the roofline's bandwidth.
2. The step: the trainer's own train step (train_setup.setup: experiment.Experiment.create, synthetic
   batch, --batch_size per device), compiled, median of --steps timed steps after --warmup. Its FLOPs
   and bytes accessed come from XLA's cost analysis of the same step with the stages unrolled (XLA counts
   a scan body once): by default of the compiled (fused) unrolled step, one extra compilation that is
   never run; with --skip_fused_bytes of the lowered one, whose bytes count every unfused HLO op's
   operands and result (an over-count). On CPU that counted step takes XLA's depthwise and attention paths
   (XLA does not count the native kernels' custom calls): the FLOPs are the timed step's, its bytes an
   over-count of what the native kernels move. Then: achieved GFLOP/s and GB/s, arithmetic intensity
   (flops/byte), the roofline ceiling min(peak, intensity * bandwidth) and the fraction of peak.
3. Which ops bound it (unless --skip_profile): one step under jax.profiler.trace; the kernels are the
   trace's events of the step's HLO module (XLA's CPU thread pool lines, and the calling thread's)
   without the containers (while, call, conditional, ThunkExecutor) and the 'end:' markers. Each event
   is looked up in the compiled HLO text: matmul/conv when it is a dot or convolution or a fusion
   containing one (YNNPACK 'ynn_fusion's are either), otherwise memory-bound, split into reduction,
   data movement (copy, transpose, slices, pads, broadcasts, ...) and element-wise. Prints the time share
   of each class and the most expensive fusion kinds (the name without its '.N'), with their bytes per
   second (operand plus result bytes of each execution: an upper bound for in-place updates) and the
   model op (HLO op_name) of the costliest instance.

Prints a table and one JSON line (also appended to --json_out). Needs no tensorflow.
"""
import argparse
import json
import os
import statistics
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hatnet_jax import models  # noqa: E402
from hlo_index import COMPUTE, HloIndex  # noqa: E402
from host_memory_flag import add_host_memory_flag, apply_host_memory_flag  # noqa: E402
from machine_limits import cpu_name, jax_matmul_gflops, stream_gbs, torch_matmul_gflops  # noqa: E402
from step_profile import profile_step  # noqa: E402
from step_timing import time_steps  # noqa: E402
from train_setup import setup, unrolled_experiment  # noqa: E402


# ---------------------------------------------------------------- the step (part 2 of the docstring)

def bench_step(args) -> tuple[dict, callable, HloIndex]:
  """Cost analysis and timing of the trainer's train step; also (a function running one step, HLO index)."""
  ns = argparse.Namespace(model=args.model, image_size=args.image_size)
  su = setup(ns, args.dtype, False, '', args.batch_size)
  out = dict(model=args.model, batch_per_device=args.batch_size, image_size=args.image_size, dtype=args.dtype,
             num_devices=su.mesh.size, global_batch=su.global_batch)

  exp_u = unrolled_experiment(su)
  lowered_u = exp_u.train_step.lower(exp_u.abstract_state, su.batch)
  cost = lowered_u.cost_analysis()
  out.update(flops_lowered=float(cost['flops']), bytes_unfused=float(cost['bytes accessed']))
  if args.skip_fused_bytes:
    out.update(flops_per_step=out['flops_lowered'], bytes_per_step=out['bytes_unfused'],
               cost_source='lowered step, stages unrolled (bytes of unfused HLO ops: an over-count)')
  else:
    t = time.perf_counter()
    cost = lowered_u.compile().cost_analysis()  # per device after SPMD partitioning
    out['unrolled_compile_s'] = time.perf_counter() - t
    out.update(flops_per_step=float(cost['flops']) * su.mesh.size,
               bytes_per_step=float(cost['bytes accessed']) * su.mesh.size,
               cost_source='compiled step, stages unrolled (fused)')
  del exp_u, lowered_u
  jax.clear_caches()

  exp = su.exp
  t = time.perf_counter()
  compiled = exp.train_step.lower(exp.abstract_state, su.batch).compile()
  out['compile_s'] = time.perf_counter() - t
  holder = [exp.init_state()]

  def run_step():
    holder[0], metrics = compiled(holder[0], su.batch)
    jax.block_until_ready(metrics['train_loss'])

  times = time_steps(run_step, args.warmup, args.steps, 1)
  out.update(step_s=statistics.median(times), step_s_min=min(times), step_s_max=max(times),
             images_per_s=su.global_batch / statistics.median(times))
  return out, run_step, HloIndex(compiled.as_text())


def roofline(limits: dict, step: dict) -> dict:
  peak, bw = limits['peak_gflops'], limits['bandwidth_gbs']
  achieved = step['flops_per_step'] / step['step_s'] / 1e9
  intensity = step['flops_per_step'] / step['bytes_per_step']
  ceiling = min(peak, intensity * bw)
  return dict(achieved_gflops=achieved, achieved_gbs=step['bytes_per_step'] / step['step_s'] / 1e9,
              intensity_flops_per_byte=intensity, ridge_flops_per_byte=peak / bw, ceiling_gflops=ceiling,
              bound='memory' if intensity * bw < peak else 'compute', fraction_of_peak=achieved / peak,
              fraction_of_ceiling=achieved / ceiling)


# ---------------------------------------------------------------- output

def report(r: dict) -> str:
  sizes = lambda d: ', '.join(f'{n}: {v:.1f}' for n, v in d.items())
  lines = [f'machine: {r["cpu"]}, {r["cpu_count"]} logical CPUs; jax {r["jax"]} {r["backend"]} '
           f'({r["num_devices"]} device(s): {r["device"]})',
           f'peak f32 matmul, JAX jnp.dot   (n: GFLOP/s): {sizes(r["matmul_gflops_jax"])} -> peak '
           f'{r["peak_gflops"]:.1f} GFLOP/s']
  if r.get('matmul_gflops_torch'):
    lines.append(f'peak f32 matmul, torch.mm ({r["torch_threads"]} thr) (n: GFLOP/s): '
                 f'{sizes(r["matmul_gflops_torch"])} -> {r["peak_gflops_torch"]:.1f} GFLOP/s (reference)')
  lines.append(f'memory bandwidth, {r["stream_mib"]} MiB f32: y = x*a+b {r["stream_scale_add_gbs"]:.1f} GB/s, '
               f'copy {r["stream_copy_gbs"]:.1f} GB/s -> {r["bandwidth_gbs"]:.1f} GB/s; ridge point '
               f'{r["ridge_flops_per_byte"]:.1f} flop/byte')
  lines += [
      '',
      f'train step: {r["model"]} {r["image_size"]}px, batch {r["batch_per_device"]}/device x {r["num_devices"]}, '
      f'{r["dtype"]} (the trainer\'s step; compile {r["compile_s"]:.1f} s)',
      '| figure | value |', '|---|---:|',
      f'| step time (median of {r["steps"]}; min-max) | {r["step_s"]:.3f} s ({r["step_s_min"]:.3f}-'
      f'{r["step_s_max"]:.3f}) |',
      f'| images/s | {r["images_per_s"]:.2f} |',
      f'| GFLOP per step | {r["flops_per_step"] / 1e9:.1f} |',
      f'| GB accessed per step | {r["bytes_per_step"] / 1e9:.1f} |',
      f'| (lowered, unfused: GFLOP / GB) | {r["flops_lowered"] / 1e9:.1f} / {r["bytes_unfused"] / 1e9:.1f} |',
      f'| arithmetic intensity | {r["intensity_flops_per_byte"]:.2f} flop/byte |',
      f'| achieved | {r["achieved_gflops"]:.1f} GFLOP/s, {r["achieved_gbs"]:.1f} GB/s |',
      f'| roofline ceiling min(peak, intensity x bandwidth) | {r["ceiling_gflops"]:.1f} GFLOP/s ({r["bound"]}-bound) |',
      f'| fraction of peak / of ceiling | {r["fraction_of_peak"]:.1%} / {r["fraction_of_ceiling"]:.1%} |',
      f'cost: {r["cost_source"]}']
  if 'class_shares' in r:
    lines += ['', f'profile of one step: {r["kernel_thread_s"]:.2f} s of kernel time on all threads '
              f'({r["num_kernel_events"]} kernel executions) in {r["profile_wall_s"]:.2f} s wall',
              '| class | share of kernel time | s |', '|---|---:|---:|']
    for cls, share in r['class_shares'].items():
      label = cls if cls == COMPUTE else f'memory-bound: {cls}'
      lines.append(f'| {label} | {share:.1%} | {share * r["kernel_thread_s"]:.2f} |')
    lines.append(f'| memory-bound, all | {r["memory_bound_share"]:.1%} | '
                 f'{r["memory_bound_share"] * r["kernel_thread_s"]:.2f} |')
    lines += ['', f'top {len(r["top_kinds"])} fusion kinds (GB/s: operand + result bytes per execution / time)',
              '| kind | class | n | ms | share | GB/s | costliest instance, its shape (ms): model op |',
              '|---|---|---:|---:|---:|---:|---|']
    for k in r['top_kinds']:
      gbs = f'{k["gbs"]:.1f}' if k['gbs'] is not None else ''
      lines.append(f'| {k["kind"]} | {k["cls"]} | {k["count"]} | {k["ms"]:.1f} | {k["share"]:.1%} | {gbs} | '
                   f'{k["costliest"]} {k["shape"]} ({k["costliest_ms"]:.1f} ms): {k["op"]} |')
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--model', default='hatnet_tiny', choices=models.names())
  parser.add_argument('--batch_size', type=int, default=16, help='per device')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--dtype', default='float32')
  parser.add_argument('--steps', type=int, default=3, help='timed train steps (median)')
  parser.add_argument('--warmup', type=int, default=1, help='untimed train steps after compilation')
  parser.add_argument('--matmul_sizes', default='2048,4096', help='square matmul sizes for the peak')
  parser.add_argument('--stream_mib', type=int, default=1024, help='MiB of the streamed f32 array')
  parser.add_argument('--repeats', type=int, default=3, help='timed calls of each micro-benchmark (best)')
  parser.add_argument('--skip_fused_bytes', action='store_true',
                      help='cost analysis of the lowered (unfused) unrolled step: no extra compilation')
  parser.add_argument('--skip_profile', action='store_true', help='no profile / op breakdown')
  parser.add_argument('--top', type=int, default=12, help='fusion kinds listed')
  parser.add_argument('--json_out', default='', help='append the JSON line to this file')
  add_host_memory_flag(parser)
  args = parser.parse_args(argv)
  apply_host_memory_flag(args, from_command_line=argv is None)

  sizes = [int(n) for n in args.matmul_sizes.split(',')]
  r = dict(cpu=cpu_name(), cpu_count=os.cpu_count(), jax=jax.__version__, backend=jax.default_backend(),
           device=jax.devices()[0].device_kind)
  r['matmul_gflops_jax'] = jax_matmul_gflops(sizes, args.repeats)
  r['peak_gflops'] = max(r['matmul_gflops_jax'].values())
  torch_gflops, torch_facts = torch_matmul_gflops(sizes, args.repeats)
  if torch_gflops:
    r.update(torch_facts, matmul_gflops_torch=torch_gflops, peak_gflops_torch=max(torch_gflops.values()))
  stream = stream_gbs(args.stream_mib, args.repeats)
  r.update(stream_mib=args.stream_mib, stream_scale_add_gbs=stream['scale_add'], stream_copy_gbs=stream['copy'],
           bandwidth_gbs=max(stream.values()))
  print(f'limits: peak {r["peak_gflops"]:.1f} GFLOP/s (JAX f32 matmul), bandwidth {r["bandwidth_gbs"]:.1f} GB/s',
        flush=True)
  jax.clear_caches()

  step, run_step, hlo = bench_step(args)
  r.update(step, steps=args.steps)
  r.update(roofline(r, step))
  if not args.skip_profile:
    r.update(profile_step(run_step, hlo, args.top))
  r['command'] = ' '.join(['python', 'benchmarks/roofline.py'] + (argv if argv is not None else sys.argv[1:]))
  print()
  print(report(r))
  line = json.dumps(r)
  print(line, flush=True)
  if args.json_out:
    with open(args.json_out, 'a') as f:
      f.write(line + '\n')
  return r


if __name__ == '__main__':
  main()
