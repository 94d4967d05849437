"""One GPU benchmark run that fits a few lent minutes: HAT-Net's train and inference speed, MFU and peak memory
against PyTorch, Semantic FPN's train step, and whether the host feed bounds the trainer. Prints one table.

    python benchmarks/gpu_suite.py --json_out=gpu_suite.jsonl                # one H100/H200, <= --budget_s
    python benchmarks/gpu_suite.py --only=tiny,torch --budget_s=300          # a subset of the rows
    python benchmarks/gpu_suite.py --smoke                                   # CPU: tiny widths, batch 2

Rows, in this order (the budget skips what no longer fits; --only/--skip select groups by name):
  tiny / large   hatnet_{tiny,large} at 224 px, bf16 compute / f32 params, --batch (128): the trainer's full
                 train step (hatnet_jax.training.steps via experiment.Experiment, data on the device), its
                 inference; PyTorch's HAT-Net (tests/references/torch_hatnet.py: bf16 autocast, channels_last)
                 eager and under torch.compile, inference and train step, at the same batch.
  feed           hatnet_tiny's full step fed as the trainer feeds it (host numpy uint8 canvases put on the device
                 each step by a prefetch thread, then the device augmentation) beside the bare step
                 (benchmarks/bare_step.py: fwd + bwd + AdamW) on device-resident data: host-bound if 'host' is
                 slower than 'train'; 'bare' shows what the trainer's extras cost.
  semfpn         semfpn_hatnet_tiny's train step at 512x512, --seg_batch (16).
  max            the largest batch that fits: train rows at --max_batch_start, doubling up to --max_batch_limit,
                 until one fails (out of memory) or runs out of time; --max_batch=1024 runs that batch only.

Each row runs in a process of its own (benchmarks/gpu_jax_rows.py, gpu_torch_rows.py) under a time cap: the
row's --row_cap_s or what is left of --budget_s, whichever is less. A row that would start with less than its
minimum left is skipped with the reason; a row that fails or is stopped keeps its error text; the table is
printed in every case (also on SIGTERM/Ctrl-C). JAX rows share a persistent compilation cache (the feed row
loads the train row's step). Peak memory is the row process's own: JAX's device peak_bytes_in_use, PyTorch's
max_memory_allocated (reset between its inference and train phases); on CPU the process's peak RSS.

MFU = images/s x GFLOP/image / peak bf16 dense TFLOP/s of the device (H100/H200 989, from the device kind;
--peak_tflops overrides). GFLOP/image: XLA's cost analysis of the train step / forward with every stage
unrolled, on the row's own backend where it gives flops before compiling, else lowered for the CPU (jax's GPU
backend gives none: 'xla_cpu_lowered'); counted once per model by its JAX train/infer row at --batch and used
for every row of that model (PyTorch's included: the same model, counted by XLA; 2 flops per multiply-add).
Needs jax, flax, optax, torch; not tensorflow, clu or ml_collections.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
# Dense bf16 peak TFLOP/s (no sparsity) by device-kind substring (as benchmarks/model_speed.py).
PEAK_BF16_TFLOPS = {'H200': 989.0, 'H100': 989.0, 'A100': 312.0, 'L4': 121.0}
GROUPS = ('tiny', 'large', 'feed', 'semfpn', 'max')
# --smoke: a 1-block-per-stage HAT-Net with narrow stages (every variant the same model, so the large rows
# load the tiny rows' programs from the compilation cache), and a narrow Semantic FPN.
SMOKE_VARIANT = dict(dims=(16, 32, 48, 64), head_dim=16, depths=(1, 1, 1, 1), stem_dim=8, kernel_sizes=(3, 3, 3, 3))
SMOKE_SEG = dict(SMOKE_VARIANT, neck_channels=32, head_channels=32)
OOM = ('RESOURCE_EXHAUSTED', 'out of memory', 'OutOfMemoryError')


class Stop(Exception):
  """SIGTERM: stop the current row and print what was measured."""


def plan(args) -> list[dict]:
  """The rows in running order: dict(group, worker 'jax'|'torch', kind, model, batch, ...)."""
  smoke = args.smoke
  size = 32 if smoke else 224
  over = SMOKE_VARIANT if smoke else {}
  jax_row = dict(worker='jax', dtype='bfloat16', image_size=size, overrides=over, canvas=64 if smoke else 0)
  compile_ok = args.torch_compile == '1' or (args.torch_compile == 'auto' and not smoke)
  rows = []
  for group, model in (('tiny', 'hatnet_tiny'), ('large', 'hatnet_large')):
    for kind in ('train', 'infer'):
      rows.append(dict(jax_row, group=group, model=model, kind=kind, batch=args.batch, count_flops=True))
    for compiled in (False, True):
      torch_row = dict(jax_row, worker='torch', group=group, model=model, kind='train+infer', batch=args.batch,
                       compile=compiled)
      if compiled and not compile_ok:
        torch_row['skip'] = ('torch.compile on CPU (inductor C++ code generation) takes minutes on this machine: '
                             'skipped in --smoke; --torch_compile=1 runs it')
      rows.append(torch_row)
  rows += [dict(jax_row, group='feed', model='hatnet_tiny', kind=kind, batch=args.batch) for kind in ('host', 'bare')]
  rows.append(dict(jax_row, group='semfpn', model='semfpn_hatnet_tiny', kind='train', batch=args.seg_batch,
                   image_size=64 if smoke else 512, overrides=SMOKE_SEG if smoke else {}, count_flops=True))
  for model in ('hatnet_tiny', 'hatnet_large'):
    rows.append(dict(jax_row, group='max', model=model, kind='search'))
  keep = lambda r: (not args.only or any(w in (r['group'], r['worker']) for w in args.only.split(','))) and not (
      args.skip and any(w in (r['group'], r['worker']) for w in args.skip.split(',')))
  return [r for r in rows if keep(r)]


def run_worker(spec: dict, cap_s: float, state: dict) -> tuple[list[dict], str | None]:
  """(rows the worker printed, error text or None) of one worker process stopped after cap_s seconds."""
  script = os.path.join(BENCH, 'gpu_jax_rows.py' if spec['worker'] == 'jax' else 'gpu_torch_rows.py')
  proc = subprocess.Popen([sys.executable, script, json.dumps(spec)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
  state['proc'] = proc
  try:
    out, _ = proc.communicate(timeout=cap_s)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)  # its whole group: torch.compile's worker processes too
    proc.communicate()
    return [], f'stopped at its time cap of {cap_s:.0f} s'
  finally:
    state['proc'] = None
  lines = [line for line in out.splitlines() if line.startswith('GPU_SUITE_ROW ')]
  if proc.returncode != 0 or not lines:
    tail = [line for line in out.strip().splitlines() if line.strip()][-6:]
    kind = 'out of memory: ' if any(k in out for k in OOM) else ''
    return [], f'{kind}exit {proc.returncode}: ' + ' | '.join(tail)[-600:]
  got = json.loads(lines[-1][len('GPU_SUITE_ROW '):])
  return (got if isinstance(got, list) else [got]), None


def label(spec: dict) -> str:
  if spec['worker'] == 'torch':
    return 'torch_compile' if spec['compile'] else 'torch_eager'
  return 'jax'


def run_suite(args) -> list[dict]:
  start, results, state = time.monotonic(), [], {'proc': None}
  caps = dict(jax=args.row_cap_s, torch=args.row_cap_s)  # one cap for both workers, kept apart for tuning
  cache = args.cache_dir or tempfile.mkdtemp(prefix='gpu_suite_cache_')

  def on_term(signum, frame):
    del signum, frame
    if state['proc'] is not None:
      os.killpg(state['proc'].pid, signal.SIGKILL)
    raise Stop()

  old = signal.signal(signal.SIGTERM, on_term)
  try:
    for spec in plan(args):
      spec = dict(spec, warmup=args.warmup, repeats=args.repeats, steps=args.steps, cache_dir=cache)
      try:
        if spec['kind'] == 'search':
          results += search(args, spec, start, caps, state)
        else:
          results += run_one(args, spec, start, caps['jax' if spec['worker'] == 'jax' else 'torch'], state)
      except Exception as e:  # pylint: disable=broad-except  (a bug in one row must not lose the table)
        results.append(dict(group=spec['group'], model=spec['model'], kind=spec['kind'], batch=spec.get('batch'),
                            framework=label(spec), status='error', error=f'suite: {type(e).__name__}: {e}'))
  except (Stop, KeyboardInterrupt):
    results.append(dict(row=len(results), status='stopped', error='the suite was stopped (signal); rows after '
                        'this one did not run'))
  finally:
    signal.signal(signal.SIGTERM, old)
    if not args.cache_dir:
      shutil.rmtree(cache, ignore_errors=True)
  return results


def run_one(args, spec, start, cap, state) -> list[dict]:
  """The rows of one worker run, or one skipped/failed row saying why."""
  return progress(start, _run_one(args, spec, start, cap, state))


def _run_one(args, spec, start, cap, state) -> list[dict]:
  base = {k: spec[k] for k in ('group', 'model', 'kind', 'batch', 'image_size', 'dtype')}
  base['framework'] = label(spec)
  left = args.budget_s - (time.monotonic() - start)
  if spec.get('skip'):
    return [dict(base, status='skipped', error=spec['skip'])]
  if left < args.min_row_s:
    return [dict(base, status='skipped', error=f'{left:.0f} s left of the {args.budget_s:.0f} s budget, a row '
                 f'needs at least {args.min_row_s:.0f} s (--budget_s, --only)')]
  t = time.monotonic()
  rows, error = run_worker(spec, min(cap, left), state)
  wall = time.monotonic() - t
  if error:
    return [dict(base, status='error', error=error, wall_s=wall)]
  out = []
  for r in rows:
    out.append({**base, **r, 'kind': r.get('kind', spec['kind']), 'framework': base['framework'], 'status': 'ok',
                'wall_s': wall})
  return out


def progress(start, rows):
  """One line per finished row as it finishes (a run killed later still shows what it measured)."""
  for r in rows:
    ips = f"{r['images_per_s']:.1f} img/s" if 'images_per_s' in r else r.get('error', '')[:160]
    print(f"[{time.monotonic() - start:.0f} s] {r['group']} {r['framework']} {r['kind']} {r['model']} batch "
          f"{r['batch']}: {r['status']} {ips}", flush=True)
  return rows


def search(args, spec, start, caps, state) -> list[dict]:
  """Train rows at doubling batches until one fails or the time runs out; the last that ran is marked."""
  rows = []
  b = args.max_batch or args.max_batch_start
  while b <= (args.max_batch or args.max_batch_limit):
    got = run_one(args, dict(spec, kind='train', batch=b), start, caps['jax'], state)
    rows += got
    if got[0]['status'] != 'ok':
      break
    b *= 2
  ok = [r for r in rows if r['status'] == 'ok']
  if ok:
    ok[-1]['largest_that_ran'] = True
    last = rows[-1]
    ok[-1]['note'] = ('--max_batch' if args.max_batch else
                      f'stopped at batch {last["batch"]}: {last["error"][:80]}' if last['status'] != 'ok' else
                      f'--max_batch_limit {args.max_batch_limit} reached')
  return rows


def add_mfu(rows: list[dict], peak_flag: float | None) -> float | None:
  """GFLOP/image of each model's JAX train/infer row onto every row of that model and kind; TFLOP/s, MFU."""
  counted = {}
  for r in rows:
    if r.get('gflops_per_image'):
      counted[(r['model'], r['image_size'], r['kind'] == 'infer')] = (r['gflops_per_image'], r['flops_source'])
  device = next((r['device'] for r in rows if r.get('device') and r['device'] != 'cpu'), '')
  peak = peak_flag or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device), None)
  for r in rows:
    key = (r.get('model'), r.get('image_size'), r.get('kind') == 'infer')
    if r.get('status') != 'ok' or key not in counted:
      continue
    r['gflops_per_image'], r['flops_source'] = counted[key]
    r['tflops'] = r['images_per_s'] * r['gflops_per_image'] / 1e3
    r['mfu'] = r['tflops'] / (peak * r.get('num_devices', 1)) if peak else None
    r['peak_tflops'] = peak
  return peak


COLUMNS = [('group', 'group', '{}'), ('framework', 'framework', '{}'), ('kind', 'kind', '{}'), ('model', 'model', '{}'),
           ('batch', 'batch', '{}'), ('px', 'image_size', '{}'), ('img/s', 'images_per_s', '{:.1f}'),
           ('min-max', None, None), ('compile s', 'compile_s', '{:.1f}'), ('GFLOP/img', 'gflops_per_image', '{:.3g}'),
           ('TFLOP/s', 'tflops', '{:.3g}'), ('MFU', 'mfu', '{:.1%}'), ('peak mem GiB', 'peak_memory_bytes', None),
           ('wall s', 'wall_s', '{:.0f}'), ('status / note', None, None)]


def table(rows: list[dict]) -> str:
  lines = ['| ' + ' | '.join(c[0] for c in COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
  for r in rows:
    cells = []
    for name, key, fmt in COLUMNS:
      if name == 'min-max':
        cells.append(f"{r['images_per_s_min']:.1f}-{r['images_per_s_max']:.1f}" if 'images_per_s_min' in r else '')
      elif name == 'status / note':
        text = r.get('error') or r.get('note') or ''
        cells.append((r.get('status', '') + (': ' + text if text else '')).replace('|', '/'))
      elif key == 'peak_memory_bytes':
        cells.append(f'{r[key] / 2**30:.2f}' if r.get(key) is not None else '')
      else:
        cells.append('' if r.get(key) is None else fmt.format(r[key]))
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def ratios(rows: list[dict]) -> list[str]:
  """JAX / PyTorch (eager, compiled) at the same model, kind and batch; host-fed and bare / full step."""
  ok = {}
  for r in rows:  # the first row of each (the 'tiny' group's, not the search's repeat of its batch)
    if r.get('status') == 'ok':
      ok.setdefault((r['framework'], r['model'], r['kind'], r['batch']), r['images_per_s'])
  out = []
  for (fw, model, kind, batch), ips in ok.items():
    if fw == 'jax' and kind in ('train', 'infer'):
      for other in ('torch_eager', 'torch_compile'):
        if (other, model, kind, batch) in ok:
          out.append(f'{model} {kind} batch {batch}: JAX / {other} = {ips / ok[(other, model, kind, batch)]:.2f}x')
    if fw == 'jax' and kind in ('host', 'bare') and ('jax', model, 'train', batch) in ok:
      out.append(f'{model} batch {batch}: {kind} / full step on device data = {ips / ok[("jax", model, "train", batch)]:.2f}x '
                 f'img/s ({ips:.1f} vs {ok[("jax", model, "train", batch)]:.1f})')
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--smoke', action='store_true', help='CPU: tiny widths, small images, batch 2')
  parser.add_argument('--batch', type=int, default=None, help='classification batch (default 128; smoke 2)')
  parser.add_argument('--seg_batch', type=int, default=None, help='Semantic FPN batch (default 16; smoke 2)')
  parser.add_argument('--budget_s', type=float, default=None, help='the whole run (default 480; smoke 600)')
  parser.add_argument('--row_cap_s', type=float, default=None, help='one row at most (default 240; smoke 300)')
  parser.add_argument('--min_row_s', type=float, default=30.0, help='a row starts only with this much budget left')
  parser.add_argument('--only', default='', help=f'comma-separated groups {GROUPS} or workers (jax, torch)')
  parser.add_argument('--skip', default='', help='comma-separated groups or workers to leave out')
  parser.add_argument('--max_batch', type=int, default=0, help="'max' group: run this batch only (no search)")
  parser.add_argument('--max_batch_start', type=int, default=None, help='search: first batch (default 256; smoke 2)')
  parser.add_argument('--max_batch_limit', type=int, default=None, help='search: last batch (default 2048; smoke 4)')
  parser.add_argument('--torch_compile', default='auto', choices=('auto', '0', '1'),
                      help='auto: on a GPU, not in --smoke (CPU)')
  parser.add_argument('--warmup', type=int, default=None, help='untimed steps after compiling (default 2; smoke 1)')
  parser.add_argument('--repeats', type=int, default=None, help='timed repetitions (default 3; smoke 1)')
  parser.add_argument('--steps', type=int, default=None, help='steps per repetition (default 5; smoke 2)')
  parser.add_argument('--peak_tflops', type=float, default=None, help='per-device peak TFLOP/s for MFU')
  parser.add_argument('--cache_dir', default='', help='persistent compilation cache (default: a temporary one)')
  parser.add_argument('--json_out', default='', help='append one JSON line per row to this file')
  args = parser.parse_args(argv)
  defaults = dict(batch=(128, 2), seg_batch=(16, 2), budget_s=(480.0, 600.0), row_cap_s=(240.0, 300.0),
                  max_batch_start=(256, 2), max_batch_limit=(2048, 4), warmup=(2, 1), repeats=(3, 1), steps=(5, 2))
  for name, (gpu, smoke) in defaults.items():
    if getattr(args, name) is None:
      setattr(args, name, smoke if args.smoke else gpu)
  for name in ('batch', 'seg_batch', 'max_batch_start', 'repeats', 'steps'):
    if getattr(args, name) < 1:
      raise ValueError(f'--{name} must be >= 1; got {getattr(args, name)}')
  unknown = [w for w in (args.only + ',' + args.skip).split(',') if w and w not in GROUPS + ('jax', 'torch')]
  if unknown:
    raise ValueError(f'--only/--skip name unknown groups {unknown}: choose from {GROUPS} or jax, torch')

  t = time.monotonic()
  rows = run_suite(args)
  peak = add_mfu(rows, args.peak_tflops)
  for i, r in enumerate(rows):
    r['row'] = i
    print('GPU_SUITE_JSON ' + json.dumps(r), flush=True)
  if args.json_out:
    with open(args.json_out, 'a') as f:
      f.writelines(json.dumps(r) + '\n' for r in rows)
  device = next((r['device'] for r in rows if r.get('device')), '?')
  versions = {k: next((r[k] for r in rows if r.get(k)), '?') for k in ('jax', 'torch')}
  source = next((r['flops_source'] for r in rows if r.get('flops_source')), 'none')
  print(f'\nGPU suite on {device} (jax {versions["jax"]}, torch {versions["torch"]}), {time.monotonic() - t:.0f} s; '
        f'bf16 compute, f32 params; MFU against {peak} TFLOP/s per device; GFLOP/img from {source}')
  print(table(rows))
  for line in ratios(rows):
    print(line)
  return rows


if __name__ == '__main__':
  main()
