"""Throughput, compile time, FLOPs, MFU and peak memory of HAT-Net's train step and inference.

    python benchmarks/model_speed.py --model=hatnet_tiny --batch_size=16
    python benchmarks/model_speed.py --model=hatnet_small --batch_size=128,256 --dtype=float32,bfloat16
    python benchmarks/model_speed.py --model=hatnet_tiny --batch_size=16 --compare_torch
    python benchmarks/model_speed.py --model=hatnet_tiny --batch_size=128 --attention_impl=xla,cudnn --remat=0,1
    python benchmarks/model_speed.py --model=hatnet_large --find_max_batch --dtype=bfloat16
    python benchmarks/model_speed.py --model=semfpn_hatnet_tiny --image_size=512 --batch_size=2

The train step is the trainer's own (hatnet_jax.training.steps.train_step via experiment.Experiment: the task's
loss (classification: mixup + soft-target CE; 'semfpn_*' models: pixel CE at 512 px crops), forward,
backward, AdamW update, EMA off) jitted over a 'data' mesh of all local devices with the trainer's shardings; inputs are synthetic
and already on the devices. --batch_size is per device. Each figure is the median of --repeats timed
repetitions (after --warmup untimed steps) with min and max. FLOPs come from XLA's cost analysis of the
step lowered with the stages unrolled (XLA counts a scan body once) and, on CPU, with XLA's depthwise
path (the native kernel's custom call is not counted; same math). Prints one JSON line per
configuration, then a table. Needs no tensorflow.

Beside the trainer's full step it times a bare model step (unless --skip_bare): forward, backward and
optax.adamw (the config's learning-rate schedule, betas, eps and weight decay with its mask) on the same
batch with plain integer-label cross-entropy (pixel CE with the ignore label for 'semfpn_*'), and no mixup,
EMA, non-finite guard or gradient/parameter norms; jitted with the same shardings and donation. The two are
timed in alternating repetitions; `full_over_bare_step_time` is the median over repetitions of full step
time / bare step time (1.10 = the trainer's step takes 10 % longer than the bare one).

Peak memory: the JAX figure is the device's peak on GPU/TPU and this process's peak RSS on CPU. With
--compare_torch the PyTorch reference (benchmarks/torch_reference.py, the HAT-Net of tests/references/torch_hatnet.py,
same model, batch and image size) runs in a subprocess of its own, before and after the JAX measurement
(its images/s: the mean of the two runs, both kept); `torch_peak_memory_bytes` is that process's own
peak RSS (on CUDA: torch's peak allocated device memory). After each compilation the compiler's freed heap
is handed back to the system (hatnet_jax.training.host_memory.release_freed_memory), as the trainer does.

CPU settings: as main.py, the benchmark first restarts with glibc's huge-page tunable (hatnet_jax.training.host_memory;
--huge_pages=0 keeps glibc's default), and the JAX programs are compiled with the trainer's
config.cpu_compiler_options (hatnet_jax.training.xla_options). The PyTorch process inherits the tunable from the
environment, so both run on the same setting (PyTorch gains from it as well: tiny's eager train step 5.8 ->
8.4 img/s on the development machine).
"""
import argparse
import itertools
import json
import os
import resource
import statistics
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hatnet_jax import models  # noqa: E402
from hatnet_jax.training import host_memory  # noqa: E402
from bare_step import bare_train_step  # noqa: E402
from host_memory_flag import add_host_memory_flag, apply_host_memory_flag  # noqa: E402
from step_timing import time_steps, time_steps_alternating  # noqa: E402
from torch_comparison import bench_torch, bracket_torch, speedups_vs_torch  # noqa: E402
from train_setup import is_segmentation, setup, unrolled_experiment  # noqa: E402

# Dense bf16 peak TFLOP/s (no sparsity) by device-kind substring, for the default MFU denominator.
PEAK_BF16_TFLOPS = {'H200': 989.0, 'H100': 989.0, 'A100': 312.0, 'L4': 121.0, 'TPU v5 lite': 197.0,
                    'TPU v4': 275.0, 'TPU v5p': 459.0}


def _peak_tflops(flag_value: float | None) -> float | None:
  if flag_value:
    return flag_value
  kind = jax.devices()[0].device_kind
  return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in kind), None)


def _peak_memory_bytes() -> tuple[int, str]:
  stats = jax.local_devices()[0].memory_stats() if jax.default_backend() != 'cpu' else None
  if stats and 'peak_bytes_in_use' in stats:
    return int(stats['peak_bytes_in_use']), 'device peak (device 0)'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 'host peak RSS'


def bench_jax(args, dtype: str, remat: bool, attention_impl: str, per_device: int) -> dict:
  su = setup(args, dtype, remat, attention_impl, per_device)
  mesh, exp, batch, images, global_batch = su.mesh, su.exp, su.batch, su.images, su.global_batch
  model = exp.model
  data_sharding = su.data_sharding
  s = args.image_size
  result = dict(model=args.model, backend=jax.default_backend(), device=jax.devices()[0].device_kind,
                num_devices=mesh.size, batch_per_device=per_device, image_size=s, dtype=dtype, remat=remat,
                attention_impl=attention_impl or 'default', jax=jax.__version__)

  # FLOPs of one train step / one forward, with every block visible to XLA's cost analysis.
  exp_u = unrolled_experiment(su)
  unrolled, abstract_u = exp_u.model, exp_u.abstract_state
  def gflops_per_image(lowered):
    cost = lowered.cost_analysis()  # None where the backend gives no pre-compilation analysis (jax 0.11 GPU)
    return cost['flops'] / global_batch / 1e9 if cost else None
  result['train_gflops_per_image'] = gflops_per_image(exp_u.train_step.lower(abstract_u, batch))
  infer_u = jax.jit(lambda v, x: unrolled.apply(v, x, train=False))
  result['infer_gflops_per_image'] = gflops_per_image(infer_u.lower(abstract_u.variables(), images))

  if 'train' in args.mode:
    t = time.perf_counter()
    compiled = exp.train_step.lower(exp.abstract_state, batch).compile()
    result['train_compile_s'] = time.perf_counter() - t
    host_memory.release_freed_memory()  # as the trainer does after compiling (hatnet_jax/training/train.py)
    holder = {'full': exp.init_state()}

    def run():
      holder['full'], metrics = compiled(holder['full'], batch)
      jax.block_until_ready(metrics['train_loss'])

    fns = {'full': run}
    if not getattr(args, 'skip_bare', False):
      bare, bare_init = bare_train_step(exp)
      holder['bare'] = bare_init()
      t = time.perf_counter()
      compiled_bare = bare.lower(holder['bare'], batch).compile()
      result['bare_train_compile_s'] = time.perf_counter() - t
      host_memory.release_freed_memory()

      def run_bare():
        holder['bare'], loss = compiled_bare(holder['bare'], batch)
        jax.block_until_ready(loss)

      fns['bare'] = run_bare
    times = time_steps_alternating(fns, args.warmup, args.repeats, args.steps)
    ips = [global_batch / t for t in times['full']]
    result.update(train_images_per_s=statistics.median(ips), train_images_per_s_min=min(ips),
                  train_images_per_s_max=max(ips))
    if 'bare' in times:
      result['bare_train_images_per_s'] = statistics.median(global_batch / t for t in times['bare'])
      result['full_over_bare_step_time'] = statistics.median(f / b for f, b in zip(times['full'], times['bare']))
    del holder

  if 'infer' in args.mode:
    params = exp.init_state().variables()  # {'params', and the model's batch_stats if it has BatchNorm}
    infer = jax.jit(lambda v, x: model.apply(v, x, train=False), out_shardings=data_sharding,
                    compiler_options=exp.compiler_options)
    t = time.perf_counter()
    compiled_infer = infer.lower(params, images).compile()
    result['infer_compile_s'] = time.perf_counter() - t
    host_memory.release_freed_memory()
    times = time_steps(lambda: jax.block_until_ready(compiled_infer(params, images)), args.warmup, args.repeats,
                       args.steps)
    ips = [global_batch / t for t in times]
    result.update(infer_images_per_s=statistics.median(ips), infer_images_per_s_min=min(ips),
                  infer_images_per_s_max=max(ips))

  peak = _peak_tflops(args.peak_tflops)
  for kind in ('train', 'infer'):
    if f'{kind}_images_per_s' in result and result[f'{kind}_gflops_per_image'] is not None:
      tflops = result[f'{kind}_images_per_s'] * result[f'{kind}_gflops_per_image'] / 1e3
      result[f'{kind}_tflops'] = tflops
      result[f'{kind}_mfu'] = tflops / (peak * mesh.size) if peak else None
  result['peak_tflops_per_device'] = peak
  result['peak_memory_bytes'], result['peak_memory_kind'] = _peak_memory_bytes()
  return result


def find_max_batch(args, dtype, remat, attention_impl) -> int:
  """Largest per-device batch (powers of two, then bisection) whose train step runs without OOM."""
  def fits(b):
    try:
      bench_jax(argparse.Namespace(**{**vars(args), 'mode': 'train', 'warmup': 1, 'repeats': 1, 'steps': 1,
                                      'skip_bare': True}),
                dtype, remat, attention_impl, b)
      return True
    except Exception as e:  # XlaRuntimeError RESOURCE_EXHAUSTED is the expected failure
      if 'RESOURCE_EXHAUSTED' not in str(e) and 'out of memory' not in str(e).lower():
        raise
      return False
    finally:
      jax.clear_caches()

  lo, hi = 0, args.max_batch_start
  while fits(hi):
    lo, hi = hi, hi * 2
  while hi - lo > max(1, lo // 16):  # to within ~6%
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  return lo


def _table(rows: list[dict]) -> str:
  cols = [('dtype', 'dtype', '{}'), ('batch/dev', 'batch_per_device', '{}'), ('attn', 'attention_impl', '{}'),
          ('remat', 'remat', '{}'), ('train img/s', 'train_images_per_s', '{:.1f}'),
          ('(min-max)', None, None), ('bare img/s', 'bare_train_images_per_s', '{:.1f}'),
          ('full/bare time', 'full_over_bare_step_time', '{:.2f}'), ('compile s', 'train_compile_s', '{:.1f}'),
          ('infer img/s', 'infer_images_per_s', '{:.1f}'), ('infer compile s', 'infer_compile_s', '{:.1f}'),
          ('GFLOP/img train', 'train_gflops_per_image', '{:.2f}'), ('train TFLOP/s', 'train_tflops', '{:.2f}'),
          ('MFU', 'train_mfu', '{:.1%}'), ('peak mem GiB', 'peak_memory_bytes', None),
          ('torch train img/s', 'torch_train_images_per_s', '{:.1f}'),
          ('torch infer img/s', 'torch_infer_images_per_s', '{:.1f}'),
          ('torch peak mem GiB', 'torch_peak_memory_bytes', None)]
  lines = ['| ' + ' | '.join(c[0] for c in cols) + ' |', '|' + '---|' * len(cols)]
  for r in rows:
    cells = []
    for _, key, fmt in cols:
      if key is None:
        lo, hi = r.get('train_images_per_s_min'), r.get('train_images_per_s_max')
        cells.append(f'{lo:.1f}-{hi:.1f}' if lo is not None else '')
      elif key in ('peak_memory_bytes', 'torch_peak_memory_bytes'):
        cells.append(f"{r[key] / 2**30:.1f}" if r.get(key) is not None else '')
      elif r.get(key) is None:
        cells.append('')
      else:
        cells.append(fmt.format(r[key]))
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--model', default='hatnet_tiny', choices=models.names())
  parser.add_argument('--batch_size', default='16', help='per-device batch sizes, comma-separated')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--dtype', default='float32', help='comma-separated: float32,bfloat16')
  parser.add_argument('--mode', default='train,infer', help='train, infer or both (comma-separated)')
  parser.add_argument('--attention_impl', default='', help="comma-separated: '' (the default: native CPU kernels on one CPU device, else JAX chooses), native, xla, cudnn")
  parser.add_argument('--remat', default='0', help='comma-separated 0/1')
  parser.add_argument('--warmup', type=int, default=1, help='untimed steps after compilation')
  parser.add_argument('--repeats', type=int, default=3, help='timed repetitions (median, min, max)')
  parser.add_argument('--steps', type=int, default=1, help='steps per timed repetition')
  parser.add_argument('--peak_tflops', type=float, default=None,
                      help='per-device peak TFLOP/s for MFU (default: bf16 dense peak of the detected GPU)')
  parser.add_argument('--skip_bare', action='store_true',
                      help='do not time the bare model step (fwd + bwd + AdamW) beside the full train step')
  parser.add_argument('--compare_torch', action='store_true',
                      help='also time the PyTorch implementation (in a subprocess: its own peak memory)')
  parser.add_argument('--find_max_batch', action='store_true', help='search the largest per-device batch')
  parser.add_argument('--max_batch_start', type=int, default=64)
  parser.add_argument('--json_out', default='', help='append the JSON lines to this file')
  add_host_memory_flag(parser)
  args = parser.parse_args(argv)
  apply_host_memory_flag(args, from_command_line=argv is None)
  args.mode = args.mode.split(',')

  rows = []
  for dtype, remat, impl in itertools.product(args.dtype.split(','), args.remat.split(','),
                                              args.attention_impl.split(',')):
    remat = remat in ('1', 'true', 'True')
    batches = args.batch_size.split(',')
    if args.find_max_batch:
      batches = [find_max_batch(args, dtype, remat, impl)]
      print(f'largest per-device batch for {args.model} {dtype} remat={remat}: {batches[0]}', flush=True)
    for b in batches:
      torch_before = None
      if args.compare_torch and not is_segmentation(args):  # the PyTorch reference is the classifier
        torch_before = bench_torch(args, dtype, int(b))
      row = bench_jax(args, dtype, remat, impl, int(b))
      if args.find_max_batch:
        row['max_batch'] = True
      if torch_before is not None:
        row.update(bracket_torch(torch_before, bench_torch(args, dtype, int(b))))
        row.update(speedups_vs_torch(row))
      row['command'] = ' '.join(['python', 'benchmarks/model_speed.py'] + (argv if argv is not None else sys.argv[1:]))
      print(json.dumps(row), flush=True)
      if args.json_out:
        with open(args.json_out, 'a') as f:
          f.write(json.dumps(row) + '\n')
      rows.append(row)
      jax.clear_caches()
  print()
  print(f'{args.model} at {args.image_size}px on {rows[0]["num_devices"]} x {rows[0]["device"]} '
        f'(jax {jax.__version__}); batch is per device')
  print(_table(rows))
  for r in rows:
    for kind in ('train', 'infer'):
      if f'{kind}_speedup_vs_torch' in r:
        print(f'{kind} {r["dtype"]} batch {r["batch_per_device"]}: {r[f"{kind}_speedup_vs_torch"]:.2f}x PyTorch '
              f'({r["torch_device"]}, {r["torch_threads"]} threads)')
    if 'full_over_bare_step_time' in r:
      print(f'train {r["dtype"]} batch {r["batch_per_device"]}: full step / bare model step time '
            f'{r["full_over_bare_step_time"]:.3f} ({r["train_images_per_s"]:.2f} vs '
            f'{r["bare_train_images_per_s"]:.2f} img/s)')
    if r.get('torch_peak_memory_bytes') is not None:
      print(f'peak memory {r["dtype"]} batch {r["batch_per_device"]}: JAX {r["peak_memory_bytes"] / 2**30:.2f} GiB '
            f'({r["peak_memory_kind"]}), PyTorch {r["torch_peak_memory_bytes"] / 2**30:.2f} GiB '
            f'({r["torch_peak_memory_kind"]})')


if __name__ == '__main__':
  main()
