"""Semantic FPN speed on CPU against mmsegmentation 1.2.2's own EncoderDecoder, in the same process.

    python benchmarks/seg_speed.py                        # default: tiny and large at 512 and 448, batch 2
    python benchmarks/seg_speed.py --smoke                # narrow model at 64x64, 1 repetition (< 60 s)
    python benchmarks/seg_speed.py --models=semfpn_hatnet_tiny --sizes=512 --profile

Per model and crop size S (float32, synthetic data in memory, --batch images, PVT's per-GPU batch 2):
  train  forward + backward + AdamW (lr 2e-4, weight decay 1e-4 on all, PVT's recipe) of the task's loss
         (hatnet_jax.tasks.segmentation.Segmentation.train_loss: pixel CE, ignore 255, BatchNorm statistics
         updated) on SxS crops with 150 classes and a tenth of the pixels ignored; drop path 0.1, head dropout
         0.1 in both.
  infer  whole-image evaluation as the eval step (Segmentation.predict): forward, bilinear resize of the
         logits to the label size (an original of 3/4 the side: ADE20K images of ~384 px upscaled to S by
         AlignResize), argmax.
  mmseg  tests/references/mmseg_semfpn.py: mmseg 1.2.2's EncoderDecoder from its registry and
         configs/_base_/models/fpn_r50.py, PVT's settings, the official HAT-Net (tests/references/torch_hatnet.py)
         as backbone; the config's SyncBN as BN (one process: the same batch statistics); NCHW eager;
         model.loss + parse_losses + torch.optim.AdamW; model.predict (encode_decode, resize to ori_shape,
         argmax). The official backbone takes any side (windows and pooling padded): both sides time both sizes.
Repetitions interleave ours and mmseg's (a busy moment of the machine touches both); one warm-up call each
after compilation, --settle_s (0.5) untimed before every call so that the other side's threads have gone idle;
the row gives medians. torch threads = the CPUs this process may use, as XLA's CPU client.
Peak RSS per side: before each timed call the kernel's peak-RSS mark is reset to the current RSS
(/proc/self/clear_refs '5'); after it VmHWM is read. `*_peak_rss_gib` is the process's peak during that side's
calls (the other side's resident parameters and optimizer state included), `*_step_rss_gib` the rise above the
RSS before the call (the step's own working memory as the OS sees it; freed memory glibc keeps is not counted).
Without /proc (not Linux) both are the process's ru_maxrss. JAX programs use the trainer's CPU compiler options;
from the command line the process restarts with glibc's huge-page tunable as main.py (torch shares it).

--profile: one of our train steps per row under jax.profiler.trace, kernel time split by the HLO op_name of
each kernel (benchmarks/step_profile.py's events): backbone, FPN 3x3 convs, FPN laterals, upsampling (the
neck's nearest top-down, the head's bilinear 2x and sum resizes, the final resize to the input), head convs
(and BN, ReLU, dropout, conv_seg), loss, optimizer, other.

Default run: 4 rows, 3 repetitions. Estimated ~13 min on a quiet 2-core CPU (from BENCHMARKS.md's earlier
tiny step of ~8 s and large's ~2.4x the FLOPs; not measured with this script). Needs jax, flax, optax, not
tensorflow, clu or ml_collections; the mmseg side needs mmseg 1.2.2 + torch and is skipped with a note without.
"""
import argparse
import collections
import glob
import json
import os
import re
import resource
import statistics
import sys
import tempfile
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hatnet_jax import models  # noqa: E402
from hatnet_jax.training import host_memory, xla_options  # noqa: E402
from hatnet_jax.tasks import segmentation  # noqa: E402
from host_memory_flag import add_host_memory_flag, apply_host_memory_flag  # noqa: E402

NUM_CLASSES, IGNORE = 150, 255  # ADE20K
LR, WEIGHT_DECAY = 2e-4, 1e-4  # PVT's Semantic FPN: AdamW 2e-4 (global batch 32), weight decay 1e-4 on all
DROP_PATH, HEAD_DROP = 0.1, 0.1
MODELS = ('semfpn_hatnet_tiny', 'semfpn_hatnet_large')
# --smoke: a 1-block-per-stage HAT-Net with narrow stages and a narrow neck and head.
SMOKE_VARIANT, SMOKE_WIDTHS = dict(dims=(16, 32, 48, 64), head_dim=16, depths=(1, 1, 1, 1), stem_dim=8), \
    dict(neck_channels=32, head_channels=16)
GIB = 2.0 ** 30


def task() -> segmentation.Segmentation:
  """The segmentation task with the one config field its train_loss and predict read."""
  return segmentation.Segmentation(types.SimpleNamespace(data=types.SimpleNamespace(ignore_index=IGNORE)))


def label_size(size: int) -> int:  # an original of 3/4 the side (module docstring)
  return size * 3 // 4


def synthetic_batch(batch: int, size: int, seed: int = 0) -> dict:
  """Normalised random SxS images; training labels at S (150 classes, ~a tenth 255); eval keys orig_size and
  label (the label size for the resize; its values unused by predict)."""
  rng = np.random.RandomState(seed)
  pixels = rng.randint(0, NUM_CLASSES + NUM_CLASSES // 9, (batch, size, size))  # 16 of 166 values: ~a tenth
  ls = label_size(size)
  return dict(image=rng.randn(batch, size, size, 3).astype(np.float32),
              label=np.where(pixels >= NUM_CLASSES, IGNORE, pixels).astype(np.int32),
              eval_label=np.zeros((batch, ls, ls), np.int32), orig_size=np.full((batch, 2), ls, np.int32))


def create_model(name: str, smoke: bool):
  kw = dict(SMOKE_VARIANT, **SMOKE_WIDTHS) if smoke else {}
  return models.create(name, num_classes=NUM_CLASSES, drop_path_rate=DROP_PATH, head_drop_rate=HEAD_DROP,
                       unroll=6, **kw)  # unroll: the trainer's default (configs/default.py)


class RssMeter:
  """Peak RSS of the calls of one function: wraps it; see the module docstring."""

  def __init__(self):
    self.peak = self.rise = 0

  @staticmethod
  def _status(field: str) -> int:
    with open('/proc/self/status') as f:
      return int(re.search(rf'^{field}:\s+(\d+) kB', f.read(), re.M).group(1)) * 1024

  def wrap(self, fn):
    def run():
      try:
        with open('/proc/self/clear_refs', 'w') as f:
          f.write('5')  # resets VmHWM to the current RSS
        before = self._status('VmRSS')
      except OSError:
        fn()
        self.peak = self.rise = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return
      fn()
      hwm = self._status('VmHWM')
      self.peak, self.rise = max(self.peak, hwm), max(self.rise, hwm - before)
    return run


def alternate(fns: dict, repeats: int, settle_s: float) -> dict[str, list[float]]:
  """step_timing.time_steps_alternating with one warm-up call each and a pause before every call: the other
  framework's worker threads (OpenMP's, XLA's pool) stop spinning before the clock starts."""
  out = {name: [] for name in fns}
  for rep in range(repeats + 1):
    for name, fn in fns.items():
      time.sleep(settle_s)
      t = time.perf_counter()
      fn()
      if rep:  # rep 0: the warm-up
        out[name].append(time.perf_counter() - t)
  return out


def _ours_train(model, variables, batch, options, out):
  """Our train step (AdamW on the task's loss, BatchNorm statistics kept), compiled; returns one-step runner."""
  import optax  # pylint: disable=g-import-not-at-top
  tx, seg = optax.adamw(LR, b1=0.9, b2=0.999, eps=1e-8, weight_decay=WEIGHT_DECAY), task()

  def step(state, batch):
    params, stats, opt_state, rng = state
    rng, dropout = jax.random.split(rng)

    def loss_fn(p):
      loss, (_, new_state) = seg.train_loss(model, {'params': p, 'batch_stats': stats}, batch, dropout,
                                            ['batch_stats'])
      return loss, new_state['batch_stats']

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), stats, opt_state, rng), loss

  params, stats = variables['params'], variables['batch_stats']
  holder = [(jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, stats), tx.init(params), jax.random.key(1))]
  batch = {'image': batch['image'], 'label': batch['label']}
  t = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=0, compiler_options=options).lower(holder[0], batch).compile()
  out['ours_train_compile_s'] = time.perf_counter() - t
  host_memory.release_freed_memory()  # as the trainer does after compiling
  batch = jax.device_put(batch)

  def run():
    holder[0], loss = compiled(holder[0], batch)
    out['ours_train_loss'] = float(loss)  # blocks

  return run, compiled


def _ours_infer(model, variables, batch, options, out):
  seg = task()
  batch = {'image': batch['image'], 'label': batch['eval_label'], 'orig_size': batch['orig_size']}
  t = time.perf_counter()
  infer = jax.jit(lambda v, b: seg.predict(model, v, b), compiler_options=options).lower(variables, batch).compile()
  out['ours_infer_compile_s'] = time.perf_counter() - t
  host_memory.release_freed_memory()
  batch = jax.device_put(batch)

  def run():
    out['ours_infer_shape'] = list(np.asarray(infer(variables, batch)).shape)  # blocks

  return run


def build_mmseg(name: str, smoke: bool):
  """mmseg 1.2.2's EncoderDecoder on the official backbone (tests/references/mmseg_semfpn.py), in train mode."""
  from tests.references import mmseg_semfpn  # pylint: disable=g-import-not-at-top
  variant = models.get_variant(name.removeprefix('semfpn_'), **(SMOKE_VARIANT if smoke else {}))
  return mmseg_semfpn.build(variant, NUM_CLASSES, drop_path_rate=DROP_PATH, **(SMOKE_WIDTHS if smoke else {}))


def _mmseg_train(seg_model, batch, out):
  import torch  # pylint: disable=g-import-not-at-top
  from tests.references import mmseg_semfpn  # pylint: disable=g-import-not-at-top
  opt = torch.optim.AdamW(seg_model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, betas=(0.9, 0.999), eps=1e-8)
  images = torch.from_numpy(np.ascontiguousarray(batch['image'].transpose(0, 3, 1, 2)))
  hw = images.shape[2:]
  samples = mmseg_semfpn.data_samples(len(images), hw, hw, batch['label'])

  def run():
    seg_model.train()
    loss, _ = seg_model.parse_losses(seg_model.loss(images, samples))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    out['mmseg_train_loss'] = loss.item()

  return run


def _mmseg_infer(seg_model, batch, out):
  import torch  # pylint: disable=g-import-not-at-top
  from tests.references import mmseg_semfpn  # pylint: disable=g-import-not-at-top
  images = torch.from_numpy(np.ascontiguousarray(batch['image'].transpose(0, 3, 1, 2)))
  samples = mmseg_semfpn.data_samples(len(images), images.shape[2:], batch['eval_label'].shape[1:])

  def run():
    seg_model.eval()
    with torch.no_grad():
      results = seg_model.predict(images, samples)
    out['mmseg_infer_shape'] = [len(results), *results[0].pred_sem_seg.data.shape[1:]]

  return run


PROFILE_PARTS = ('backbone', 'FPN 3x3 convs', 'FPN laterals', 'upsampling', 'head', 'loss', 'optimizer', 'other')


def profile_part(op_name: str) -> str:
  """Which part of the train step a kernel's HLO op_name belongs to (see the module docstring). Flax names the
  model's scopes (SemanticFPN.features/backbone.features/..., neck/..., decode_head/...); the bilinear resizes
  are einsums named by their spec ('oh,bhwc->bowc'), the neck's nearest top-down a jnp.take; the loss is
  differentiated outside the model (jvp(...) of log_softmax, take_along_axis); the optimizer's update is plain
  jit(step)/... arithmetic."""
  if 'backbone' in op_name:
    return 'backbone'
  if 'fpn_convs' in op_name:
    return 'FPN 3x3 convs'
  if '->' in op_name or '/neck/jit(_take)' in op_name:
    return 'upsampling'
  if '/neck/' in op_name:
    return 'FPN laterals'
  if 'decode_head' in op_name:
    return 'head'
  if 'SemanticFPN' not in op_name and 'jvp(' in op_name:
    return 'loss'
  if op_name.startswith('jit(step)/') and 'SemanticFPN' not in op_name and 'threefry' not in op_name:
    return 'optimizer'
  return 'other'


def profile_train(run_step, compiled) -> dict:
  """One train step under jax.profiler.trace: kernel seconds (summed over XLA's threads) per part."""
  from hlo_index import HloIndex  # pylint: disable=g-import-not-at-top
  from step_profile import kernel_events  # pylint: disable=g-import-not-at-top
  hlo = HloIndex(compiled.as_text())
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      run_step()
    paths = glob.glob(os.path.join(d, '**', '*.xplane.pb'), recursive=True)
    events = kernel_events(paths[0], hlo.module) if paths else []
  parts = collections.Counter()
  for name, ns in events:
    if not hlo.is_container(name):
      ins = hlo.instrs.get(name)
      parts[profile_part(ins.op_name if ins else '')] += ns
  total = sum(parts.values()) or 1
  return {p: dict(s=parts[p] / 1e9, share=parts[p] / total) for p in PROFILE_PARTS}


def bench_row(args, name: str, size: int, model, variables, seg_model) -> dict:
  """One model at one crop size: train steps, then inference, each interleaved with mmseg's."""
  options, threads = xla_options.compiler_options(), len(os.sched_getaffinity(0))
  out = dict(kind='timing', model=name, size=size, label_size=label_size(size), batch=args.batch, threads=threads,
             backend=jax.default_backend(), jax=jax.__version__, smoke=args.smoke, repeats=args.repeats, warmup=1)
  if seg_model is not None:
    import torch  # pylint: disable=g-import-not-at-top
    out['torch'], out['torch_threads'] = torch.__version__, torch.get_num_threads()
  batch = synthetic_batch(args.batch, size)
  meters = collections.defaultdict(RssMeter)
  for phase in ('train', 'infer'):
    fns, compiled = {}, None
    if phase == 'train':
      fns['ours'], compiled = _ours_train(model, variables, batch, options, out)
      if seg_model is not None:
        fns['mmseg'] = _mmseg_train(seg_model, batch, out)
    else:
      fns['ours'] = _ours_infer(model, variables, batch, options, out)
      if seg_model is not None:
        fns['mmseg'] = _mmseg_infer(seg_model, batch, out)
    timed = {who: meters[f'{who}_{phase}'].wrap(fn) for who, fn in fns.items()}
    for who, secs in alternate(timed, args.repeats, args.settle_s).items():
      out[f'{who}_{phase}_s_all'] = secs
      out[f'{who}_{phase}_images_per_s'] = args.batch / statistics.median(secs)
    if phase == 'train' and args.profile:
      out['ours_train_profile'] = profile_train(fns['ours'], compiled)
    del fns, timed, compiled
    host_memory.release_freed_memory()
  for key, m in meters.items():
    out[f'{key}_peak_rss_gib'], out[f'{key}_step_rss_gib'] = m.peak / GIB, m.rise / GIB
  if seg_model is not None:
    for phase in ('train', 'infer'):
      out[f'{phase}_ratio'] = out[f'ours_{phase}_images_per_s'] / out[f'mmseg_{phase}_images_per_s']
  return out


def print_table(rows: list[dict]):
  if not rows:
    return
  r0 = rows[0]
  print(f"\nSemantic FPN, float32, batch {r0['batch']}, {r0['threads']} threads; medians of {r0['repeats']} "
        f"interleaved repetitions after 1 warm-up (all in the JSON lines); ratio = ours / mmseg img/s")
  print('| model | size | phase | ours img/s | mmseg img/s | ratio | our compile s | peak RSS GiB ours / mmseg '
        '| step RSS GiB ours / mmseg |\n|---|---:|---|---:|---:|---:|---:|---:|---:|')
  for r in rows:
    for phase in ('train', 'infer'):
      def cell(key, fmt, r=r):
        return format(r[key], fmt) if key in r else '-'
      print(f"| {r['model']} | {r['size']} | {phase} | {cell(f'ours_{phase}_images_per_s', '.3f')} | "
            f"{cell(f'mmseg_{phase}_images_per_s', '.3f')} | {cell(f'{phase}_ratio', '.2f')} | "
            f"{cell(f'ours_{phase}_compile_s', '.1f')} | {cell(f'ours_{phase}_peak_rss_gib', '.2f')} / "
            f"{cell(f'mmseg_{phase}_peak_rss_gib', '.2f')} | {cell(f'ours_{phase}_step_rss_gib', '.2f')} / "
            f"{cell(f'mmseg_{phase}_step_rss_gib', '.2f')} |")
  for r in rows:
    if 'ours_train_profile' in r:
      parts = ', '.join(f"{p} {v['share']:.0%} ({v['s']:.2f} s)" for p, v in r['ours_train_profile'].items())
      print(f"our train step's kernel time, {r['model']} at {r['size']}: {parts}")


def _mmseg_available() -> str:
  """'' if mmseg 1.2.2's EncoderDecoder can be built here, else why not."""
  try:
    from tests.references import mmseg_stub  # pylint: disable=g-import-not-at-top
    mmseg_stub.install()
    from mmseg.models import segmentors  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except Exception as e:  # pylint: disable=broad-except
    return f'{type(e).__name__}: {e}'[:200]
  return ''


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--models', default=','.join(MODELS), help='comma-separated semfpn_* models')
  parser.add_argument('--sizes', default='512,448', help='square crop sides (comma-separated)')
  parser.add_argument('--batch', type=int, default=2, help="images per step (PVT's per-GPU batch: 2)")
  parser.add_argument('--repeats', type=int, default=3, help='timed, interleaved repetitions (median)')
  parser.add_argument('--settle_s', type=float, default=0.5, help='pause before each call (not timed)')
  parser.add_argument('--skip_mmseg', action='store_true')
  parser.add_argument('--profile', action='store_true', help="split our train step's kernel time by part")
  parser.add_argument('--smoke', action='store_true', help='narrow model at 64x64, 1 repetition')
  parser.add_argument('--json_out', default='', help='append the JSON lines to this file')
  add_host_memory_flag(parser)
  args = parser.parse_args(argv)
  apply_host_memory_flag(args, from_command_line=argv is None)
  if args.smoke:
    args.models, args.sizes, args.repeats, args.settle_s = MODELS[0], '64', 1, 0.0
  names = [n for n in args.models.split(',') if n]
  for n in names:
    if n not in models.names() or models.family(n)[1] is not models.SemanticFPN:
      raise ValueError(f"--models: {n!r} is not a Semantic FPN model; use names like 'semfpn_hatnet_tiny'")
  sizes = [int(s) for s in args.sizes.split(',') if s]
  if any(s < 32 or s % 32 for s in sizes) or args.batch < 1 or args.repeats < 1:
    raise ValueError(f'--sizes must be multiples of 32 (the strides go to 32), --batch and --repeats >= 1; got '
                     f'sizes={sizes}, batch={args.batch}, repeats={args.repeats}')
  why_not = 'by --skip_mmseg' if args.skip_mmseg else _mmseg_available()
  print(f'mmseg comparison skipped: {why_not}' if why_not else 'mmseg comparison on', flush=True)
  if not why_not:
    __import__('torch').set_num_threads(len(os.sched_getaffinity(0)))  # as XLA's CPU client
  rows, start = [], time.perf_counter()
  for name in names:
    model = create_model(name, args.smoke)
    variables = jax.jit(lambda m=model: m.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))()
    seg_model = None if why_not else build_mmseg(name, args.smoke)
    for size in sizes:
      row = bench_row(args, name, size, model, variables, seg_model)
      row['elapsed_s'] = time.perf_counter() - start
      print(json.dumps(row), flush=True)
      rows.append(row)
    del seg_model, variables
    jax.clear_caches()  # the model's programs
  if args.json_out:
    with open(args.json_out, 'a') as f:
      f.writelines(json.dumps(r) + '\n' for r in rows)
  print_table(rows)
  print(f'total {time.perf_counter() - start:.0f} s', flush=True)
  return rows


if __name__ == '__main__':
  main()
