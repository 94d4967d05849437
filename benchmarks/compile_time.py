"""Compile time of the trainer's train step, each trial in a fresh process, and what the persistent
compilation cache saves on a second start.

  python benchmarks/compile_time.py --model=hatnet_large --unroll=6,0 --trials=3
  python benchmarks/compile_time.py --model=semfpn_hatnet_tiny --image_size=512 --batch_size=2 --trials=1
  python benchmarks/compile_time.py --model=hatnet_large --cache_runs=2      # empty cache, then warm

Per trial a child process builds the trainer's experiment (benchmarks/train_setup.py: the config of the model's
recipe, synthetic batch, one CPU device) and times `train_step.lower(...)` (trace + lower) and `.compile()`
(wall and the process's CPU seconds: XLA compiles kernels on several threads), then runs one step. Without
--cache_runs the persistent cache is off (every trial compiles from scratch); with it, the runs share one new
cache directory (hatnet_jax.training.compile_cache, as main.py configures it) and each reports the programs
loaded/written and the seconds from process start to the end of its first step. Prints a table (median over
trials, every trial in brackets) and one JSON line per setting (--json_out appends them).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

_START = time.perf_counter()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(args) -> dict:
  """One fresh process: compile the train step once (and load it through the cache if one is set)."""
  import resource  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import train_setup  # pylint: disable=g-import-not-at-top
  from hatnet_jax.training import compile_cache  # pylint: disable=g-import-not-at-top
  compile_cache.configure(args.cache_dir or None)
  ns = argparse.Namespace(model=args.model, image_size=args.image_size)
  s = train_setup.setup(ns, 'float32', False, '', args.batch_size)
  if args.unroll != 'default' or args.options != 'default':
    from hatnet_jax.training import experiment  # pylint: disable=g-import-not-at-top
    config = s.config.copy_and_resolve_references()
    if args.unroll != 'default':
      config.model.unroll = int(args.unroll)
    if args.options != 'default':
      config.cpu_compiler_options = json.loads(args.options)
    s.exp = experiment.Experiment.create(config, mesh=s.mesh, facts=s.facts)
  out = {'unroll': s.exp.config.model.unroll, 'options': args.options}
  t, c = time.perf_counter(), time.process_time()
  lowered = s.exp.train_step.lower(s.exp.abstract_state, s.batch)
  out['lower_s'] = time.perf_counter() - t
  t, c = time.perf_counter(), time.process_time()
  compiled = lowered.compile()
  out['compile_s'] = time.perf_counter() - t
  out['compile_cpu_s'] = time.process_time() - c
  state = s.exp.init_state()
  state, metrics = compiled(state, s.batch)
  jax.block_until_ready(metrics)
  out['first_step_since_start_s'] = time.perf_counter() - _START
  t = time.perf_counter()
  state, metrics = compiled(state, s.batch)
  jax.block_until_ready(metrics)
  out['step_s'] = time.perf_counter() - t
  counts = compile_cache.counts() if args.cache_dir else None
  out['cache_loaded'], out['cache_written'] = counts if counts else (0, 0)
  out['peak_rss_gib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
  return out


def run_child(args, unroll: str, cache_dir: str, options: str = 'default') -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), '--child', f'--model={args.model}', f'--unroll={unroll}',
         f'--options={options}',
         f'--image_size={args.image_size}', f'--batch_size={args.batch_size}', f'--cache_dir={cache_dir}']
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('{')]
  if proc.returncode or not lines:
    raise RuntimeError(f'child failed ({proc.returncode}): {proc.stderr[-2000:]}')
  return json.loads(lines[-1])


def summarise(rows: list[dict], key: str) -> str:
  values = [r[key] for r in rows]
  med = statistics.median(values)
  return f'{med:.1f} ({", ".join(f"{v:.1f}" for v in values)})' if len(values) > 1 else f'{med:.1f}'


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--model', default='hatnet_large')
  p.add_argument('--unroll', default='default', help="comma-separated config.model.unroll values ('default': the "
                 "recipe's)")
  p.add_argument('--options', default='default', help="';'-separated JSON dicts of config.cpu_compiler_options "
                 "('default': the trainer's; '{}': none)")
  p.add_argument('--image_size', type=int, default=224)
  p.add_argument('--batch_size', type=int, default=16)
  p.add_argument('--trials', type=int, default=3, help='fresh processes per setting (cache off)')
  p.add_argument('--cache_runs', type=int, default=0, help='instead: this many runs sharing one new cache dir')
  p.add_argument('--json_out', default='')
  p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--cache_dir', default='', help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.child:
    print(json.dumps(child(args)))
    return 0
  print(f'| model | unroll | XLA options | run | trace+lower s | compile s (CPU s) | first step since start s | step s | cache '
        'loaded/written |')
  print('|---|---|---|---|---:|---:|---:|---:|---|')
  settings = [(u, o) for u in args.unroll.split(',') for o in args.options.split(';')]
  for unroll, options in settings:
    if args.cache_runs:
      with tempfile.TemporaryDirectory() as cache:
        rows = [run_child(args, unroll, cache, options) for _ in range(args.cache_runs)]
      labels = ['empty cache'] + ['warm cache'] * (len(rows) - 1)
      groups = [([r], l) for r, l in zip(rows, labels)]
    else:
      rows = [run_child(args, unroll, '', options) for _ in range(args.trials)]
      groups = [(rows, f'median of {len(rows)}')]
    for group, label in groups:
      r0 = group[0]
      print(f'| {args.model} | {r0["unroll"]} | {options} | {label} | {summarise(group, "lower_s")} | '
            f'{summarise(group, "compile_s")} ({summarise(group, "compile_cpu_s")}) | '
            f'{summarise(group, "first_step_since_start_s")} | {summarise(group, "step_s")} | '
            f'{r0["cache_loaded"]}/{r0["cache_written"]} |')
    record = {'model': args.model, 'unroll': rows[0]['unroll'], 'options': options, 'image_size': args.image_size,
              'batch_size': args.batch_size, 'runs': rows, 'cache_runs': args.cache_runs}
    if args.json_out:
      with open(args.json_out, 'a') as f:
        f.write(json.dumps(record) + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
