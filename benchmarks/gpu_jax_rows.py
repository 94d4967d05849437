"""The JAX rows of benchmarks/gpu_suite.py, one row per process (the suite's time cap can stop it, and the
device's peak memory is this row's alone). Not meant to be run by hand:

    python benchmarks/gpu_jax_rows.py '{"kind": "train", "model": "hatnet_tiny", "batch": 128, ...}'

kinds: 'train' (the trainer's full step, hatnet_jax.training.steps.train_step through experiment.Experiment,
on a batch already on the device), 'host' (the same compiled step fed as the trainer feeds it: uint8 canvases
from host numpy arrays put on the devices each step by a prefetch thread, then the device augmentation),
'bare' (benchmarks/bare_step.py: forward, backward, AdamW, on device-resident data), 'infer' (forward).
Prints one line 'GPU_SUITE_ROW {json}'.

The GPU image has no ml_collections: the config is CLASSIFICATION / SEGMENTATION below as plain values (the
fields the experiment, task and optimizer read; tests/benchmarks/test_gpu_suite.py compares them with
configs/default.py and configs/seg_default.py) in a dict with attribute access (the package names
ml_collections in annotations only, under TYPE_CHECKING).
"""
import json
import os
import queue
import resource
import sys
import threading
import time

import numpy as np

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH))
sys.path.insert(0, BENCH)


class Config(dict):
  """A ConfigDict-free config: a dict whose keys are also attributes (what the experiment reads)."""

  def __getattr__(self, key):
    try:
      return self[key]
    except KeyError:
      raise AttributeError(key) from None

  def __setattr__(self, key, value):
    self[key] = value


import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from hatnet_jax import layout, models, tasks  # noqa: E402
from hatnet_jax.data.classification import augment  # noqa: E402
from hatnet_jax.training import experiment  # noqa: E402
from bare_step import bare_train_step  # noqa: E402

# configs/default.py's values (PVT/DeiT ImageNet recipe); num_steps/warmup_steps as benchmarks/train_setup.py.
_BOOKKEEPING = dict(seed=0, mode='train', grad_accum_steps=1, ema_decay=0.0, shard_params=False,
                    shard_params_min_size=2**14, log_every_steps=100, checkpoint_every_steps=1000,
                    keep_checkpoints=3, init_from='', eval_every_epochs=1, eval_every_steps=None,
                    cpu_compiler_options=dict(xla_cpu_scheduler_type='CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'),
                    log_images_count=8, b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=0.0, lr_power=0.9)
CLASSIFICATION = dict(
    _BOOKKEEPING, task='classification', batch_size=1024, base_lr=5e-4, lr_base_batch=512, min_lr=1e-5,
    warmup_lr=1e-6, num_epochs=300, num_steps=1000, warmup_epochs=5, warmup_steps=10, weight_decay=0.05,
    weight_decay_on='kernels', lr_schedule='cosine',
    model=dict(name='hatnet_tiny', drop_path_rate=0.1, drop_rate=0.0, head_drop_rate=0.2, dtype='float32',
               param_dtype='float32', remat=False, unroll=6, attention_impl='', depthwise_impl='auto',
               norm_impl='auto'),
    mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0, mixup_prob=1.0, switch_prob=0.5, label_smoothing=0.1),
    data=dict(image_size=224, device_resize=512, interpolation='bicubic', antialias=True,
              mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), hflip_prob=0.5,
              randaugment='rand-m9-mstd0.5-inc1', erase_prob=0.25, erase_mode='pixel', erase_count=1, prefetch=2))
# configs/seg_default.py's (Semantic FPN, PVT's ADE20K recipe on mmseg).
SEGMENTATION = dict(
    _BOOKKEEPING, task='segmentation', batch_size=32, base_lr=2e-4, lr_base_batch=32, min_lr=0.0, warmup_lr=0.0,
    num_epochs=None, num_steps=1000, warmup_epochs=None, warmup_steps=10, weight_decay=1e-4,
    weight_decay_on='all', lr_schedule='poly', eval_every_epochs=None, eval_every_steps=4000,
    checkpoint_every_steps=4000, log_every_steps=50, log_images_count=4,
    model=dict(CLASSIFICATION['model'], name='semfpn_hatnet_tiny', head_drop_rate=0.1),
    data=dict(crop_size=512, ignore_index=255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), prefetch=2))
NUM_CLASSES, SEG_CLASSES = 1000, 150


def as_config(d: dict) -> Config:
  return Config({k: as_config(v) if isinstance(v, dict) else v for k, v in d.items()})


def is_segmentation(model: str) -> bool:
  return models.family(model)[1] is models.SemanticFPN


def trainer_config(spec: dict, global_batch: int, extra_model: dict | None = None) -> Config:
  """The trainer's config for the row: the recipe of the model's task at spec's batch, size and dtype."""
  seg = is_segmentation(spec['model'])
  c = as_config(SEGMENTATION if seg else CLASSIFICATION)
  c.batch_size = global_batch
  c.model.update({'name': spec['model'], 'dtype': spec['dtype'], **spec.get('overrides', {}), **(extra_model or {})})
  c.data['crop_size' if seg else 'image_size'] = spec['image_size']
  if not seg and spec.get('canvas'):
    c.data.device_resize = spec['canvas']
  return c


def build(spec: dict, devices, extra_model=None):
  """(experiment, mesh, global batch) of the row's config on a 'data' mesh of `devices`."""
  mesh = layout.create_mesh(devices)
  global_batch = spec['batch'] * mesh.size
  seg = is_segmentation(spec['model'])
  facts = tasks.DatasetFacts(name='synthetic', num_classes=SEG_CLASSES if seg else NUM_CLASSES,
                             num_train=1000 * global_batch, num_eval=0)
  exp = experiment.Experiment.create(trainer_config(spec, global_batch, extra_model), mesh=mesh, facts=facts)
  return exp, mesh, global_batch


def synthetic_batch(spec: dict, global_batch: int) -> dict:
  """Normalised random images; labels (per pixel for Semantic FPN, a tenth of them ignored)."""
  s = spec['image_size']
  images = np.random.RandomState(0).randn(global_batch, s, s, 3).astype(np.float32)
  if is_segmentation(spec['model']):
    pixels = np.random.RandomState(1).randint(0, SEG_CLASSES + SEG_CLASSES // 9, (global_batch, s, s))
    return dict(image=images, label=np.where(pixels >= SEG_CLASSES, 255, pixels).astype(np.int32))
  return dict(image=images, label=np.arange(global_batch, dtype=np.int32) % NUM_CLASSES)


def host_batches(spec: dict, global_batch: int, canvas: int, count: int = 2) -> list[dict]:
  """What the classification pipeline's host side hands over (device_resize): uint8 canvases with the crop in
  the top-left window of `extent` (height, width), and labels; `count` distinct batches, cycled."""
  rng = np.random.RandomState(2)
  s = spec['image_size']
  return [dict(image=rng.randint(0, 256, (global_batch, canvas, canvas, 3)).astype(np.uint8),
               extent=rng.randint(s // 2, canvas + 1, (global_batch, 2)).astype(np.int32),
               label=rng.randint(0, NUM_CLASSES, global_batch).astype(np.int32)) for _ in range(count)]


def timed(run_steps, warmup: int, repeats: int, steps: int) -> list[float]:
  """Seconds per step of each repetition; run_steps(n) dispatches n steps and blocks on the last."""
  if warmup:
    run_steps(warmup)
  out = []
  for _ in range(repeats):
    t = time.perf_counter()
    run_steps(steps)
    out.append((time.perf_counter() - t) / steps)
  return out


def peak_memory() -> tuple[int, str]:
  """The device's peak bytes in use (GPU/TPU), or this process's peak RSS (CPU)."""
  stats = jax.local_devices()[0].memory_stats() if jax.default_backend() != 'cpu' else None
  if stats and 'peak_bytes_in_use' in stats:
    return int(stats['peak_bytes_in_use']), 'device peak_bytes_in_use'
  with open('/proc/self/status') as f:  # VmHWM: this process's own peak (ru_maxrss would keep the parent's)
    hwm = [line for line in f if line.startswith('VmHWM:')]
  if hwm:
    return int(hwm[0].split()[1]) * 1024, 'host peak RSS'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 'host peak RSS'


def gflops_per_image(spec: dict, kind: str, lowered) -> tuple[float | None, str]:
  """XLA's cost analysis of the step with every stage unrolled (a scan body counts once) on XLA's own paths
  (the native CPU kernels are custom calls it cannot see into), per image. Counted on this backend where its
  Lowered.cost_analysis() gives flops (CPU; `lowered`, the row's own program, tells), else on the same program
  lowered for the CPU (jax's GPU backend gives none before compiling)."""
  cost = lowered.cost_analysis() if lowered is not None else None
  here = jax.default_backend() == 'cpu' or bool(cost and cost.get('flops'))
  devices = jax.local_devices() if here else jax.devices('cpu')[:1]
  source = f'xla_{jax.default_backend()}' if here else 'xla_cpu_lowered'
  xla = models.xla_paths(spec.get('overrides', {}).get('depthwise_impl', 'auto'), '', 'auto')
  exp, mesh, global_batch = build({**spec, 'batch': spec['batch'] * len(jax.local_devices()) // len(devices)},
                                  devices, extra_model=dict(xla, unroll=True))
  sharding = NamedSharding(mesh, P(layout.DATA_AXIS))
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding)
           for k, v in synthetic_batch(spec, global_batch).items()}
  if kind == 'infer':
    fn = jax.jit(lambda v, x: exp.model.apply(v, x, train=False))
    cost = fn.lower(exp.abstract_state.variables(), batch['image']).cost_analysis()
  else:
    cost = exp.train_step.lower(exp.abstract_state, batch).cost_analysis()
  flops = cost.get('flops') if cost else None
  return (flops / global_batch / 1e9 if flops else None), source


def run_row(spec: dict) -> dict:
  if spec.get('cache_dir'):  # a program compiled by an earlier row (the host row's step) is loaded, not rebuilt
    jax.config.update('jax_compilation_cache_dir', spec['cache_dir'])
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  kind = spec['kind']
  exp, mesh, global_batch = build(spec, jax.local_devices())
  sharding = layout.data_sharding(mesh)
  batch = jax.device_put(synthetic_batch(spec, global_batch), sharding)
  row = dict(device=jax.devices()[0].device_kind, backend=jax.default_backend(), num_devices=mesh.size,
             global_batch=global_batch, jax=jax.__version__)
  holder, lowered = {}, None
  if kind == 'infer':
    spec_in = exp.task.init_input()
    variables = jax.jit(lambda r: exp.model.init({'params': r}, jnp.zeros(spec_in.shape, spec_in.dtype),
                                                 train=False))(jax.random.key(0))
    fn = jax.jit(lambda v, x: exp.model.apply(v, x, train=False), out_shardings=sharding,
                 compiler_options=exp.compiler_options)
    t = time.perf_counter()
    lowered = fn.lower(variables, batch['image'])
    compiled = lowered.compile()
    row['compile_s'] = time.perf_counter() - t

    def run_steps(n):
      for _ in range(n):
        out = compiled(variables, batch['image'])
      jax.block_until_ready(out)
  elif kind == 'bare':
    step, init = bare_train_step(exp)
    holder['state'] = init()
    t = time.perf_counter()
    lowered = step.lower(holder['state'], batch)
    compiled = lowered.compile()
    row['compile_s'] = time.perf_counter() - t

    def run_steps(n):
      for _ in range(n):
        holder['state'], holder['loss'] = compiled(holder['state'], batch)
      holder['loss'] = float(holder['loss'])
  else:  # 'train' and 'host': the trainer's full step
    holder['state'] = exp.init_state()
    t = time.perf_counter()
    lowered = exp.train_step.lower(exp.abstract_state, batch)
    compiled = lowered.compile()
    row['compile_s'] = time.perf_counter() - t
    next_batch = (lambda: batch)
    if kind == 'host':
      next_batch, close = host_feed(spec, exp, sharding, global_batch, row)

    def run_steps(n):
      for _ in range(n):
        holder['state'], metrics = compiled(holder['state'], next_batch())
      holder['loss'] = float(metrics['train_loss'])
  try:
    times = timed(run_steps, spec['warmup'], spec['repeats'], spec['steps'])
  finally:
    if kind == 'host':
      close()
  ips = sorted(global_batch / t for t in times)
  row.update(images_per_s=ips[len(ips) // 2], images_per_s_min=ips[0], images_per_s_max=ips[-1])
  if 'loss' in holder:
    row['loss'] = holder['loss']
  row['peak_memory_bytes'], row['peak_memory_kind'] = peak_memory()
  if spec.get('count_flops'):
    t = time.perf_counter()
    try:
      row['gflops_per_image'], row['flops_source'] = gflops_per_image(spec, kind, lowered)
    except RuntimeError as e:  # e.g. JAX_PLATFORMS=cuda leaves no CPU backend to lower for
      row['gflops_per_image'], row['flops_source'] = None, f'none ({str(e)[:120]})'
    row['flops_count_s'] = time.perf_counter() - t
  return row


def host_feed(spec, exp, sharding, global_batch, row):
  """(next_batch, close): the trainer's feed of synthetic host batches. A thread puts host numpy batches on
  the devices (jax.make_array_from_process_local_data, as data/stream.py's GlobalBatches) and runs the device
  augmentation (crop resize, flip, RandAugment, erasing: data/classification/augment.py, as the pipeline's
  TrainIterator), config.data.prefetch batches ahead."""
  d = exp.config.data
  cfg = augment.AugmentConfig.from_data_config(d)
  aug = jax.jit(lambda images, seed, step, extents: augment.augment_batch(images, seed, step, cfg, extents),
                out_shardings=sharding)
  host = host_batches(spec, global_batch, int(d.device_resize))
  put = lambda x: jax.make_array_from_process_local_data(sharding, x, x.shape)
  t = time.perf_counter()
  jax.block_until_ready(aug.lower(put(host[0]['image']), np.uint32(0), np.int32(0),
                                  put(host[0]['extent'])).compile())
  row['augment_compile_s'] = time.perf_counter() - t
  row['canvas'] = int(d.device_resize)
  ready, stop = queue.Queue(maxsize=max(1, int(d.prefetch))), threading.Event()

  def produce():
    step = 0
    while not stop.is_set():
      h = host[step % len(host)]
      images = aug(put(h['image']), np.uint32(exp.config.seed), np.int32(step), put(h['extent']))
      item = dict(image=images, label=put(h['label']))
      while not stop.is_set():
        try:
          ready.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      step += 1

  thread = threading.Thread(target=produce, daemon=True)
  thread.start()

  def close():
    stop.set()
    thread.join(timeout=10)

  return ready.get, close


if __name__ == '__main__':
  print('GPU_SUITE_ROW ' + json.dumps(run_row(json.loads(sys.argv[1]))), flush=True)
