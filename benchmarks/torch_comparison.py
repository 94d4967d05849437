"""model_speed.py --compare_torch: the PyTorch reference (torch_reference.py, a process of its own) run
before and after the JAX measurement, the two runs combined, and JAX's speed-up over it."""
import json
import os
import subprocess
import sys


def bench_torch(args, dtype: str, per_device: int) -> dict:
  """The PyTorch HAT-Net of the parity tests (tests/references/torch_hatnet.py): AdamW train step and inference on one
  device (CUDA if available, with bf16 autocast for dtype=bfloat16), run by benchmarks/torch_reference.py in
  a subprocess so that its peak memory is its own (`torch_peak_memory_bytes`)."""
  cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'torch_reference.py'),
         f'--model={args.model}', f'--batch_size={per_device}', f'--image_size={args.image_size}', f'--dtype={dtype}',
         f'--mode={",".join(args.mode)}', f'--warmup={args.warmup}', f'--repeats={args.repeats}',
         f'--steps={args.steps}']
  out = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if out.returncode != 0:
    raise RuntimeError(f'{" ".join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}')
  return json.loads(out.stdout.strip().splitlines()[-1])


def bracket_torch(before: dict, after: dict) -> dict:
  """The PyTorch reference run before and after the JAX measurement, combined: images/s the mean of the two
  runs (each kept as `torch_{kind}_images_per_s_runs`), peak memory the larger. A shared machine's speed
  drifts over minutes; bracketing puts both runs' conditions around the JAX one."""
  out = dict(after)
  for kind in ('train', 'infer'):
    key = f'torch_{kind}_images_per_s'
    if key in before and key in after:
      out[key] = (before[key] + after[key]) / 2
      out[key + '_runs'] = [before[key], after[key]]
  if before.get('torch_peak_memory_bytes') is not None and after.get('torch_peak_memory_bytes') is not None:
    out['torch_peak_memory_bytes'] = max(before['torch_peak_memory_bytes'], after['torch_peak_memory_bytes'])
  return out


def speedups_vs_torch(row: dict) -> dict:
  """{'{kind}_speedup_vs_torch': JAX images/s per device / PyTorch images/s} for train and infer, where a row
  has both."""
  out = {}
  for kind in ('train', 'infer'):
    if f'torch_{kind}_images_per_s' in row and f'{kind}_images_per_s' in row:
      per_device = row[f'{kind}_images_per_s'] / row['num_devices']
      out[f'{kind}_speedup_vs_torch'] = per_device / row[f'torch_{kind}_images_per_s']
  return out
