"""What ADE20K's whole-image evaluation costs: one compile per AlignResize shape, then images/s per shape.

    python benchmarks/seg_eval_cost.py --config=configs/seg_fpn_hatnet_tiny.py \
        --shapes=512x512,512x704,704x512,512x1024,512x2048
    python benchmarks/seg_eval_cost.py --e2e --config=configs/seg_fpn_hatnet_tiny.py --images=30
    python benchmarks/seg_eval_cost.py --e2e --config=configs/seg_digits.py:tiny --images=6 --divide=4 \
        --scale=128,32 --min_compile_time=0   # smoke test: ~1-2 min

Shapes mode: the trainer's own eval step (`experiment.Experiment.eval_step`: the task's `eval_outputs`, i.e.
Semantic FPN forward, logits resized to the label size with torch's bilinear rule, argmax, the confusion
matrix) for one image (batch 1, as mmseg's test loader) at each --shapes (h x w: the AlignResize size; the
label is at the same size). Per shape: trace + lower seconds, compile seconds, the first call, and the
steady-state images/s (median of --repeats calls, min and max). The persistent compilation cache is off
here, so every compile is a real one. --compile_threads=N then compiles all the shapes again at once in N
threads (after jax.clear_caches()), to see whether concurrent compiles shorten the wall time.

E2E mode (--e2e): a synthetic ADE20K-like validation folder (`seg_folder`: --images JPEGs of ADE20K-like
sizes (SIZES, cycled), random labels 0..150 as PNG, reduce_zero_label) and a saved random initialisation of
the model (params and batch_stats, what `--config.init_from` takes) in a temporary directory; then
`config.mode='eval'` (train.train_and_evaluate, as main.py calls it, after compile_cache.configure) runs
--runs times, each in a fresh process, all sharing one new compilation_cache_dir. Per run: the process's
wall time (imports included), the evaluation's own time, and the cache's counts (programs loaded / written,
compile_cache.counts()). The first run compiles everything, later ones should load it all. The runs call
the library as main.py does, without main.py's glibc huge-page restart (config.cpu_huge_pages).

The bound on distinct shapes (docs/segmentation.md): AlignResize rescales to fit (L, S) = (2048, 512) keeping
the aspect ratio, then rounds both sides up to multiples of a = 32, so every shape has its short side S
(aspect <= L/S) or its long side L (aspect > L/S): `shape_bound` = 2L/a - 1 = 127.
"""
import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_timing import time_steps  # noqa: E402

DEFAULT_SHAPES = '512x512,512x704,704x512,512x1024,512x2048'
# (h, w) of the synthetic val images, cycled: ADE20K's common 4:3 / 3:4 photos, squares, wide ones and one
# panorama (AlignResize (2048, 512): 512x704, 704x512, 512x512, 512x928, 768x512, 512x1024, 512x2048).
SIZES = ((512, 683), (375, 500), (683, 512), (512, 512), (480, 640), (512, 910), (600, 400), (384, 768),
         (256, 1024), (500, 375), (256, 256), (480, 640))
NUM_CLASSES = 150  # ADE20K


def shape_bound(scale=(2048, 512), align=32) -> int:
  """Distinct AlignResize shapes of any (h, w): (S, x) for x in {S, S+a, .., L}, (y, L) for y in {a, .., S-a}
  (aspect > L/S), both orientations, the square once: 2 L / a - 1 (L, S multiples of a)."""
  long_, short = max(scale), min(scale)
  assert long_ % align == 0 and short % align == 0, 'the closed form needs L and S multiples of align'
  per_orientation = (long_ - short) // align + 1 + short // align - 1
  return 2 * per_orientation - 1


def distinct_shapes(sizes, scale=(2048, 512), align=32) -> set:
  """The AlignResize shapes (hatnet_jax's own `align_size`) of (h, w) sizes."""
  from hatnet_jax.data.segmentation.transforms import align_size  # pylint: disable=g-import-not-at-top
  return {align_size(h, w, tuple(scale), align) for h, w in sizes}


def parse_shapes(text: str) -> list:
  """'512x512,512x704' -> [(512, 512), (512, 704)] (h x w)."""
  out = []
  for item in filter(None, (s.strip() for s in text.split(','))):
    h, w = item.lower().split('x')
    out.append((int(h), int(w)))
  return out


def load_config(spec: str):
  """'configs/x.py' or 'configs/x.py:variant' -> the file's get_config([variant])."""
  path, _, variant = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('_bench_config', os.path.join(REPO, path)
                                                       if not os.path.isabs(path) else path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


# ------------------------------------------------------------------------------------------------
# Shapes mode: compile seconds and images/s per AlignResize shape
# ------------------------------------------------------------------------------------------------


def time_shapes(args) -> list:
  """The shapes table; the persistent compilation cache is off meanwhile (real compiles, not cache loads)
  and restored after, so that a caller in the same process (the tests) keeps its setting."""
  import jax  # pylint: disable=g-import-not-at-top
  previous = jax.config.jax_enable_compilation_cache
  jax.config.update('jax_enable_compilation_cache', False)
  try:
    return _time_shapes(args)
  finally:
    jax.config.update('jax_enable_compilation_cache', previous)


def _time_shapes(args) -> list:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from hatnet_jax import layout, tasks  # pylint: disable=g-import-not-at-top
  from hatnet_jax.training import experiment, host_memory  # pylint: disable=g-import-not-at-top
  config = load_config(args.config)
  with config.unlocked():
    config.batch_size = 1
    if args.model:
      config.model.name = args.model
  mesh = layout.create_mesh(jax.local_devices()[:1])
  facts = tasks.DatasetFacts(name='synthetic', num_classes=NUM_CLASSES, num_train=1000, num_eval=0)
  exp = experiment.Experiment.create(config, mesh=mesh, facts=facts)
  t = time.perf_counter()
  state = jax.block_until_ready(exp.init_state())
  init_s = time.perf_counter() - t
  print(f'{config.model.name}: init (compile + run) {init_s:.1f}s', flush=True)
  sharding = layout.data_sharding(mesh)
  rng = np.random.RandomState(0)
  rows, batches = [], []
  for h, w in parse_shapes(args.shapes):
    labels = rng.randint(0, NUM_CLASSES + NUM_CLASSES // 9, (1, h, w))
    batch = jax.device_put(dict(image=rng.randn(1, h, w, 3).astype(np.float32),
                                label=np.where(labels >= NUM_CLASSES, 255, labels).astype(np.int32),
                                orig_size=np.array([[h, w]], np.int32), mask=np.ones([1], np.float32)), sharding)
    batches.append(batch)
    t0 = time.perf_counter()
    lowered = exp.eval_step.lower(state, batch)
    t1, c1 = time.perf_counter(), time.process_time()
    compiled = lowered.compile()
    t2, c2 = time.perf_counter(), time.process_time()
    jax.block_until_ready(compiled(state, batch))
    t3 = time.perf_counter()
    host_memory.release_freed_memory()
    secs = time_steps(lambda: jax.block_until_ready(compiled(state, batch)), 0, args.repeats, 1)
    row = dict(model=config.model.name, shape=f'{h}x{w}', lower_s=round(t1 - t0, 2), compile_s=round(t2 - t1, 2),
               compile_cpu_s=round(c2 - c1, 1), first_call_s=round(t3 - t2, 2),
               images_per_s=round(1 / statistics.median(secs), 3), images_per_s_min=round(1 / max(secs), 3),
               images_per_s_max=round(1 / min(secs), 3), init_s=round(init_s, 1))
    print(json.dumps(row), flush=True)
    rows.append(row)
    del compiled, lowered
  if args.compile_threads > 1:  # the same compiles at once: does a pool of threads shorten the wall time?
    rows.append(_compile_concurrently(exp, state, batches, args.compile_threads, config.model.name))
  return rows


def _compile_concurrently(exp, state, batches, threads, model):
  from concurrent.futures import ThreadPoolExecutor  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  jax.clear_caches()  # else the in-memory caches hand back the programs compiled above
  t, c = time.perf_counter(), time.process_time()
  with ThreadPoolExecutor(threads) as pool:
    list(pool.map(lambda b: exp.eval_step.lower(state, b).compile(), batches))
  row = dict(model=model, shape=f'all {len(batches)} at once, {threads} threads',
             lower_s=0.0, compile_s=round(time.perf_counter() - t, 2), compile_cpu_s=round(time.process_time() - c, 1))
  print(json.dumps(row), flush=True)
  return row


def print_shapes_table(rows):
  print('\n| model | AlignResize shape (h x w) | trace+lower s | compile s (CPU s) | first call s | img/s (min-max) |')
  print('|---|---|---:|---:|---:|---:|')
  for r in rows:
    speed = (f"{r['first_call_s']:.2f} | {r['images_per_s']:.3f} ({r['images_per_s_min']:.3f}-"
             f"{r['images_per_s_max']:.3f})") if 'images_per_s' in r else ' | '
    print(f"| {r['model']} | {r['shape']} | {r['lower_s']:.1f} | {r['compile_s']:.1f} ({r['compile_cpu_s']:.1f}) | "
          f"{speed} |")


# ------------------------------------------------------------------------------------------------
# E2E mode: the synthetic folder, a saved init, evaluations in fresh processes sharing one cache
# ------------------------------------------------------------------------------------------------


def make_folder(root: str, n: int, seed: int = 0, divide: int = 1) -> list:
  """`seg_folder` layout under root: n validation images (SIZES cycled, each side // divide) with random
  labels 0..150 (0 ignored), and one training pair (the folder needs a train split). Returns the sizes."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(seed)
  sizes = [(max(h // divide, 8), max(w // divide, 8)) for h, w in (SIZES[i % len(SIZES)] for i in range(n))]
  for split, split_sizes in (('validation', sizes), ('train', sizes[:1])):
    os.makedirs(os.path.join(root, 'images', split), exist_ok=True)
    os.makedirs(os.path.join(root, 'annotations', split), exist_ok=True)
    for i, (h, w) in enumerate(split_sizes):
      # Smooth colours (JPEG-friendly) and blocky labels, like a photo and its segments.
      small = rng.randint(0, 256, (max(h // 16, 1), max(w // 16, 1), 3)).astype(np.uint8)
      Image.fromarray(small).resize((w, h), Image.BILINEAR).save(
          os.path.join(root, 'images', split, f'img_{i:04d}.jpg'), quality=90)
      blocks = rng.randint(0, NUM_CLASSES + 1, (max(h // 32, 1), max(w // 32, 1))).astype(np.uint8)
      Image.fromarray(blocks).resize((w, h), Image.NEAREST).save(os.path.join(root, 'annotations', split,
                                                                              f'img_{i:04d}.png'))
  return sizes


def eval_overrides(args, root: str, init_dir: str, cache_dir: str) -> dict:
  """The config fields an e2e evaluation sets (dotted names -> values)."""
  out = {'mode': 'eval', 'init_from': init_dir, 'compilation_cache_dir': cache_dir, 'data.dataset': 'seg_folder',
         'data.manual_dir': root, 'data.num_classes': NUM_CLASSES, 'data.train_split': 'train',
         'data.eval_split': 'validation',
         'data.eval_batch_size': args.eval_batch_size, 'batch_size': args.eval_batch_size}
  if args.scale:
    out['data.scale'] = tuple(int(x) for x in args.scale.split(','))
  if args.model:
    out['model.name'] = args.model
  return out


def apply_overrides(config, overrides: dict):
  with config.unlocked():
    for key, value in overrides.items():
      *parents, leaf = key.split('.')
      node = config
      for p in parents:
        node = node[p]
      node[leaf] = tuple(value) if isinstance(value, list) else value  # JSON gives lists
  return config


def save_init(config, path: str):
  """A random initialisation of config.model (150 classes): params and batch_stats, what init_from takes."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from hatnet_jax import models  # pylint: disable=g-import-not-at-top
  from hatnet_jax.tools import convert  # pylint: disable=g-import-not-at-top
  model = models.create(**config.model, num_classes=NUM_CLASSES)
  variables = jax.jit(lambda r: model.init(r, jnp.zeros([1, 64, 64, 3]), train=False))(jax.random.PRNGKey(0))
  convert.save(variables['params'], path, batch_stats=variables['batch_stats'])


def child_main(args) -> int:
  """One evaluation in this (fresh) process: prints one JSON line with its time and the cache's counts."""
  overrides = json.loads(args.child)
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)  # the trainer's log lines, as main.py shows them
  config = apply_overrides(load_config(args.config), overrides)
  from hatnet_jax.training import compile_cache, train  # pylint: disable=g-import-not-at-top
  compile_cache.configure(config.compilation_cache_dir)  # as main.py, before anything compiles
  t = time.perf_counter()
  train.train_and_evaluate(config, args.workdir)
  eval_s = time.perf_counter() - t
  loaded, written = compile_cache.counts() or (0, 0)
  print('CHILD ' + json.dumps(dict(eval_s=round(eval_s, 1), loaded=loaded, written=written)), flush=True)
  sys.stdout.flush()
  os._exit(0)  # as main.py: skip the interpreter's teardown of tf.data / XLA threads


def e2e(args) -> list:
  """The synthetic folder, a saved init, then --runs evaluations in fresh processes; returns their rows."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  config = load_config(args.config)
  tmp = tempfile.mkdtemp(prefix='seg_eval_cost_')
  try:
    root, init_dir, cache_dir = (os.path.join(tmp, n) for n in ('ade_like', 'init', 'xla_cache'))
    sizes = make_folder(root, args.images, divide=args.divide)
    overrides = eval_overrides(args, root, init_dir, cache_dir)
    config = apply_overrides(config, overrides)
    shapes = distinct_shapes(sizes, config.data.scale, config.data.align)
    print(f'{len(sizes)} images, {len(shapes)} distinct AlignResize shapes: {sorted(shapes)}', flush=True)
    save_init(config, init_dir)
    env = dict(os.environ)
    env.pop('JAX_COMPILATION_CACHE_DIR', None)  # the run's own new cache directory, not a shared one
    if args.min_compile_time is not None:
      env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = str(args.min_compile_time)
    rows = []
    for run in range(args.runs):
      cmd = [sys.executable, os.path.abspath(__file__), f'--config={args.config}', f'--child={json.dumps(overrides)}',
             f'--workdir={os.path.join(tmp, f"workdir{run}")}']
      t = time.perf_counter()
      out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=args.timeout, env=env)
      wall = time.perf_counter() - t
      line = next((l for l in out.stdout.splitlines() if l.startswith('CHILD ')), None)
      if out.returncode != 0 or line is None:
        raise RuntimeError(f'evaluation {run + 1} failed ({out.returncode}):\n{out.stderr[-4000:]}')
      result = (l for l in out.stderr.splitlines() if 'Evaluation of step' in l)
      row = dict(json.loads(line[len('CHILD '):]), run=run + 1, wall_s=round(wall, 1),
                 images=len(sizes), shapes=len(shapes), cache_files=len(os.listdir(cache_dir)),
                 result=next(result, '').split('] ')[-1])
      print(json.dumps(row), flush=True)
      rows.append(row)
    return rows
  finally:
    if args.keep_tmp:
      print(f'kept {tmp}')
    else:
      shutil.rmtree(tmp, ignore_errors=True)


def print_e2e_table(rows):
  print('\n| evaluation (fresh process) | wall s (process) | eval s (in process) | programs loaded | written | '
        'images | shapes |')
  print('|---|---:|---:|---:|---:|---:|---:|')
  for r in rows:
    print(f"| {r['run']} | {r['wall_s']:.1f} | {r['eval_s']:.1f} | {r['loaded']} | {r['written']} | "
          f"{r['images']} | {r['shapes']} |")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--config', default='configs/seg_fpn_hatnet_tiny.py', help="config file[:variant]")
  p.add_argument('--model', default='', help="override config.model.name, e.g. semfpn_hatnet_large")
  p.add_argument('--shapes', default=DEFAULT_SHAPES, help='AlignResize shapes h x w, comma-separated')
  p.add_argument('--repeats', type=int, default=3, help='timed calls per shape (after the first)')
  p.add_argument('--compile_threads', type=int, default=0,
                 help='also compile all --shapes again at once in this many threads (wall vs the sum above)')
  p.add_argument('--json_out', default='', help='append one JSON line per row to this file')
  p.add_argument('--e2e', action='store_true', help='evaluations of a synthetic folder in fresh processes')
  p.add_argument('--images', type=int, default=30, help='e2e: validation images')
  p.add_argument('--divide', type=int, default=1, help='e2e: divide the synthetic image sides by this (smoke)')
  p.add_argument('--scale', default='', help="e2e: config.data.scale 'long,short' (default: the config's)")
  p.add_argument('--eval_batch_size', type=int, default=1, help="e2e: config.data.eval_batch_size")
  p.add_argument('--runs', type=int, default=2, help='e2e: evaluations, each in a fresh process')
  p.add_argument('--timeout', type=float, default=3600, help='e2e: seconds per evaluation')
  p.add_argument('--min_compile_time', type=float, default=None,
                 help="e2e: JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS for the runs (default: the trainer's 1 s)")
  p.add_argument('--keep_tmp', action='store_true', help='e2e: keep the temporary folder')
  p.add_argument('--child', default='', help=argparse.SUPPRESS)
  p.add_argument('--workdir', default='', help=argparse.SUPPRESS)
  return p.parse_args(argv)


def main(argv=None) -> list:
  args = parse_args(argv)
  if args.child:
    return child_main(args)
  rows = e2e(args) if args.e2e else time_shapes(args)
  (print_e2e_table if args.e2e else print_shapes_table)(rows)
  if args.json_out:
    with open(args.json_out, 'a') as f:
      for r in rows:
        f.write(json.dumps(r) + '\n')
  return rows


if __name__ == '__main__':
  main()
