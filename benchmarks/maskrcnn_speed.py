"""Mask R-CNN speed and memory at 1333x800: maskrcnn_hatnet_tiny's train step and evaluation, float32.

    python benchmarks/maskrcnn_speed.py --json_out=maskrcnn_speed.jsonl   # the table (estimated 10-15 min quiet)
    python benchmarks/maskrcnn_speed.py --smoke                           # tiny widths, 96x96, 1 repetition

The default run's time is an estimate (not measured): RetinaNet tiny's step was ~50 s at batch 2 and its eval
~4 s per image on this 2-core CPU (BENCHMARKS.md), compiles ~0.5-1 min per program; --smoke takes ~60 s quiet
(~90 s at load 4). The batch-1 eval program is 512 XLA GFLOP (256 GMACs) per 800x1344 image.

Rows (synthetic data in memory, the task's own code through hatnet_jax.tasks.instance_segmentation):
  train     InstanceSegmentation.train_loss (RPN 256-anchor sampling, proposals without gradient, 512 sampled
            RoIs, RoIAlign, box and mask heads, mask targets) + backward + optax.adamw (lr 1e-4, weight decay
            1e-4 on all, PVT's recipe), jitted, drop-path 0.1; --train_batch images (mmdet's per-GPU 2) on an
            800x1344 canvas: 1333x800 and 1066x800 images, 5-10 GT boxes each (sides 4-50 % of the short side,
            aspect 1/2-2) padded to max_boxes 100, each GT mask a filled ellipse in its box, bit-packed
            (uint8 [100, 800, 168], np.packbits(axis=-1, bitorder='little'), as DetTransform's output).
  eval_bN   InstanceSegmentation.predict at batch N (RPN -> 1000 proposals -> box head -> class-wise NMS ->
            100 detections -> mask head), jitted. The box head's bias puts HOT_CLASSES classes above
            score_thr for every proposal, so NMS and the host part work at full load (100 detections per image,
            as an untrained or a COCO model at score 0.05 mostly gives).
  host      InstanceSegmentation._encode_masks on the largest eval batch's outputs (the paste of each 28x28
            mask into the original image, threshold 0.5, pycocotools RLE), seconds per image. Without
            pycocotools (a bare GPU image) the RLE is left out (`host_rle` false): paste only.
Each row: img/s from the median of --repeats timed calls (each call's seconds in `s_all`), after --warmup
untimed calls; compile s; memory: on CPU the process's peak RSS during the row's calls and its rise above the
RSS before each call (benchmarks/seg_speed.py's RssMeter: VmHWM reset through /proc/self/clear_refs), on GPU
JAX's device peak_bytes_in_use, which cannot be reset: the rows run smallest first (eval_b1, eval_b2, host,
train) and each reports the running peak after its calls; `xla_temp_gib` is the compiled program's own scratch
(memory_analysis). GFLOP/img: XLA's cost analysis of the batch-1 eval program on XLA's own paths (the native CPU
kernels are custom calls it cannot see into), stages unrolled (a scan body counts once), 2 flops per multiply-add;
the NMS loops count once (negligible). JAX programs use the trainer's CPU compiler options; from the command line
the process restarts with glibc's huge-page tunable as main.py. Needs jax, flax, optax; not tensorflow, clu or
ml_collections.
"""
import argparse
import json
import os
import statistics
import sys
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
try:
  import pycocotools.mask  # noqa: F401,E402  pylint: disable=unused-import
  HAVE_PYCOCOTOOLS = True
except ImportError:  # metrics/coco.py imports it at the top; only the RLE of the host row needs it
  HAVE_PYCOCOTOOLS = False
  for _name, _attrs in (('pycocotools', {}), ('pycocotools.mask', {}), ('pycocotools.coco', {'COCO': None}),
                        ('pycocotools.cocoeval', {'COCOeval': None})):
    sys.modules[_name] = types.ModuleType(_name)
    vars(sys.modules[_name]).update(_attrs)
  sys.modules['pycocotools'].mask = sys.modules['pycocotools.mask']
from hatnet_jax.metrics import coco  # noqa: E402
from hatnet_jax.tasks import instance_segmentation  # noqa: E402
from host_memory_flag import add_host_memory_flag, apply_host_memory_flag  # noqa: E402
if not HAVE_PYCOCOTOOLS:
  coco.masks_to_rle = lambda masks: [None] * len(masks)  # paste only (module docstring)
from seg_speed import GIB, RssMeter  # noqa: E402

NUM_CLASSES = 80  # COCO
# config.detection of configs/maskrcnn_default.py (maskrcnn_config()) as plain values; a test compares them.
DETECTION = dict(rpn_strides=(4, 8, 16, 32, 64), rpn_anchor_scale=8, rpn_ratios=(0.5, 1.0, 2.0), rpn_pos_iou_thr=0.7,
                 rpn_neg_iou_thr=0.3, rpn_min_pos_iou=0.3, rpn_num_samples=256, rpn_pos_fraction=0.5,
                 rpn_train_nms_pre=2000, rpn_test_nms_pre=1000, rpn_max_per_img=1000, rpn_nms_iou=0.7,
                 rpn_min_bbox_size=0.0, rcnn_pos_iou_thr=0.5, rcnn_neg_iou_thr=0.5, rcnn_min_pos_iou=0.5,
                 rcnn_num_samples=512, rcnn_pos_fraction=0.25, rcnn_max_candidates=4000, roi_window=(42, 42),
                 mask_target_chunk=16, images_per_group=2, score_thr=0.05, nms_iou=0.5, max_per_img=100)
SIZE_DIVISOR, MAX_BOXES, BOXES_PER_IMAGE = 32, 100, (5, 10)
LR = WEIGHT_DECAY = 1e-4  # PVT's Mask R-CNN 1x: AdamW 1e-4, weight decay 1e-4
DROP_PATH = 0.1  # configs/det_default.py's, which maskrcnn_default keeps
HOT_CLASSES, HOT_BIAS = 8, 5.0  # softmax ~0.12 > score_thr for 8 classes on every RoI: NMS at full load
ORIG_FRACTION = 0.6  # each image's original size: 0.6 x its resized size (480x800 for 800x1333)
# --smoke: configs/maskrcnn_digits.py's ':tiny' model and its detection overrides (a test compares them).
SMOKE_MODEL = dict(dims=(8, 16, 24, 32), head_dim=8, depths=(1, 1, 1, 1), expansions=(4, 4, 4, 4),
                   grid_sizes=(2, 1, 1, 1), ds_ratios=(2, 1, 1, 1), kernel_sizes=(3, 3, 3, 3), stem_dim=8,
                   neck_channels=8, rpn_channels=8, fc_channels=16, mask_channels=8)
SMOKE_DETECTION = dict(rpn_anchor_scale=4, rpn_train_nms_pre=1000, rpn_test_nms_pre=1000, rpn_max_per_img=50,
                       rcnn_num_samples=32, rcnn_max_candidates=200, roi_window=(14, 14), mask_target_chunk=64)


class Fields(types.SimpleNamespace):
  """A ConfigDict's reading side (attributes and .get) without ml_collections."""

  def get(self, key, default=None):
    return getattr(self, key, default)


def detection_cfg(smoke: bool) -> Fields:
  return Fields(**{**DETECTION, **(SMOKE_DETECTION if smoke else {})})


def task(smoke: bool) -> instance_segmentation.InstanceSegmentation:
  """The task with the config fields its train_loss and predict read (config.detection, data.size_divisor)."""
  config = Fields(detection=detection_cfg(smoke), data=Fields(size_divisor=SIZE_DIVISOR, with_masks=True))
  return instance_segmentation.InstanceSegmentation(config)


def create_model(name: str, smoke: bool, **kw):
  return models.create(name, num_classes=NUM_CLASSES, drop_path_rate=DROP_PATH, **(SMOKE_MODEL if smoke else {}),
                       **kw)


def image_sizes(batch: int, canvas: tuple[int, int]) -> np.ndarray:
  """(h, w) per image: the canvas height, widths 5/3 and 4/3 of it (1333 and 1066 at 800) in turn, capped."""
  h, w = canvas
  return np.array([[h, min(w, h * (5, 4)[i % 2] // 3)] for i in range(batch)], np.int32)


def ellipse_masks(boxes: np.ndarray, canvas: tuple[int, int]) -> np.ndarray:
  """The filled ellipse inscribed in each box (pixel centres inside), bit-packed: uint8 [N, H, W // 8]."""
  h, w = canvas
  ys, xs = np.arange(h, dtype=np.float32) + 0.5, np.arange(w, dtype=np.float32) + 0.5
  out = np.zeros((len(boxes), h, w), bool)
  for k, (x0, y0, x1, y1) in enumerate(boxes):
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) / 2, 1e-3), max((y1 - y0) / 2, 1e-3)
    out[k] = ((xs[None, :] - cx) / rx) ** 2 + ((ys[:, None] - cy) / ry) ** 2 <= 1.0
  return np.packbits(out, axis=-1, bitorder='little')


def synthetic_batch(batch: int, canvas: tuple[int, int], seed: int = 0) -> dict:
  """A batch as the detection pipeline gives it with masks (DetTransform's keys, plus the eval `mask`), the
  image normalised random noise. See the module docstring for the sizes."""
  h, w = canvas
  if h % SIZE_DIVISOR or w % SIZE_DIVISOR or w % 8 or batch < 1:
    raise ValueError(f'synthetic_batch: the canvas sides must be multiples of {SIZE_DIVISOR} and batch >= 1; got '
                     f'canvas {canvas}, batch {batch}')
  rng = np.random.RandomState(seed)
  sizes = image_sizes(batch, canvas)
  boxes = np.zeros((batch, MAX_BOXES, 4), np.float32)
  labels = np.full((batch, MAX_BOXES), -1, np.int32)
  masks = np.zeros((batch, MAX_BOXES, h, w // 8), np.uint8)
  counts = rng.randint(BOXES_PER_IMAGE[0], BOXES_PER_IMAGE[1] + 1, batch)
  for i, ((ih, iw), n) in enumerate(zip(sizes, counts)):
    short = min(ih, iw)
    side = short * np.exp(rng.uniform(np.log(0.04), np.log(0.5), n))
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0), n))  # h / w
    wh = np.minimum(np.stack([side / np.sqrt(aspect), side * np.sqrt(aspect)], 1), [iw - 1, ih - 1])
    xy = rng.uniform(0, 1, (n, 2)) * (np.array([iw, ih]) - wh)
    boxes[i, :n] = np.concatenate([xy, xy + wh], axis=1)
    labels[i, :n] = rng.randint(0, NUM_CLASSES, n)
    masks[i, :n] = ellipse_masks(boxes[i, :n], canvas)
  valid = np.arange(MAX_BOXES)[None] < counts[:, None]
  orig = np.round(sizes * ORIG_FRACTION).astype(np.int32)
  return dict(image=rng.randn(batch, h, w, 3).astype(np.float32), boxes=boxes, labels=labels, box_valid=valid,
              crowd=np.zeros_like(valid), masks=masks, image_size=sizes, scale=(sizes / orig).astype(np.float32),
              orig_size=orig, image_id=np.arange(batch, dtype=np.int32), mask=np.ones(batch, bool))


def init_params(model):
  """mmdet's initialisation, with HOT_CLASSES classes' box-head bias at HOT_BIAS (module docstring)."""
  # XLA's CPU backend optimises the ~100 initialisers for ~30 s at level 2; unoptimised they compile in ~8 s.
  fast = {'xla_backend_optimization_level': 0} if jax.default_backend() == 'cpu' else None
  params = jax.jit(model.init, compiler_options=fast)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))['params']
  fc_cls = params['roi_head']['bbox_head']['fc_cls']
  fc_cls['bias'] = fc_cls['bias'].at[:HOT_CLASSES].set(HOT_BIAS)
  return params


def eval_gflops(name: str, smoke: bool, canvas: tuple[int, int]) -> float | None:
  """XLA's flops of the batch-1 eval program (predict) per image, on XLA's paths, unrolled; None where the
  backend gives no cost before compiling (GPU)."""
  model = create_model(name, smoke, unroll=True, **models.xla_paths())
  params = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in synthetic_batch(1, canvas).items()
           if k in ('image', 'image_size', 'scale')}
  t = task(smoke)
  cost = jax.jit(lambda v, b: t.predict(model, v, b)).lower(params, batch).cost_analysis()
  return cost['flops'] / 1e9 if cost and cost.get('flops') else None


def device_peak_bytes() -> int | None:
  stats = jax.local_devices()[0].memory_stats() if jax.default_backend() != 'cpu' else None
  return int(stats['peak_bytes_in_use']) if stats and 'peak_bytes_in_use' in stats else None


def _compile(fn, *args, options, donate=()):
  t = time.perf_counter()
  compiled = jax.jit(fn, donate_argnums=donate, compiler_options=options).lower(*args).compile()
  seconds = time.perf_counter() - t
  host_memory.release_freed_memory()  # as the trainer does after compiling
  mem = compiled.memory_analysis()
  return compiled, seconds, (mem.temp_size_in_bytes / GIB if mem is not None else None)


def train_runner(model, params, batch, smoke, options, row):
  """The compiled train step (AdamW on the task's loss) on `batch`; returns a function that runs one step."""
  import optax  # pylint: disable=g-import-not-at-top
  tx, t = optax.adamw(LR, b1=0.9, b2=0.999, eps=1e-8, weight_decay=WEIGHT_DECAY), task(smoke)

  def step(state, batch):
    params, opt_state, rng = state
    rng, key = jax.random.split(rng)

    def loss_fn(p):
      loss, (metrics, _) = t.train_loss(model, {'params': p}, batch, key, ())
      return loss, metrics

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, rng), (loss, metrics)

  holder = [(jax.tree.map(jnp.copy, params), tx.init(params), jax.random.key(1))]
  compiled, row['compile_s'], row['xla_temp_gib'] = _compile(step, holder[0], batch, options=options, donate=(0,))
  batch = jax.device_put(batch)

  def run():
    holder[0], (loss, metrics) = compiled(holder[0], batch)
    row['loss'] = float(loss)  # blocks
    row['rcnn_positives_per_image'] = float(metrics['train_rcnn_positives_per_image'])
    row['rpn_positives_per_image'] = float(metrics['train_rpn_positives_per_image'])

  return run


def eval_runner(model, params, batch, smoke, options, row, keep):
  """The compiled predict on `batch` (image, image_size, scale); each call's outputs go to keep[0]."""
  t, inputs = task(smoke), {k: batch[k] for k in ('image', 'image_size', 'scale')}
  compiled, row['compile_s'], row['xla_temp_gib'] = _compile(lambda p, b: t.predict(model, {'params': p}, b),
                                                             params, inputs, options=options)
  inputs = jax.device_put(inputs)

  def run():
    keep[0] = jax.device_get(compiled(params, inputs))  # blocks
    row['detections_per_image'] = float(keep[0]['valid'].sum()) / len(keep[0]['valid'])

  return run


def host_runner(outputs, batch, row):
  """InstanceSegmentation._encode_masks on a batch's predict outputs (paste + RLE) as the accumulator calls it."""
  rows = {k: np.asarray(v) for k, v in outputs.items() if k != 'canvas_boxes'}
  rows['orig_size'] = batch['orig_size']
  row['compile_s'] = 0.0

  def run():
    out = instance_segmentation.InstanceSegmentation._encode_masks(rows)  # pylint: disable=protected-access
    row['rles_per_image'] = sum(len(r) for r in out['rles']) / len(out['rles'])

  return run


def measure(run, batch: int, args, row: dict) -> dict:
  """Times `run` (warm-up, then repeats) with the memory figures of the module docstring."""
  meter = RssMeter()
  timed = meter.wrap(run)
  for _ in range(args.warmup):
    timed()
  secs = []
  for _ in range(args.repeats):
    t = time.perf_counter()
    timed()
    secs.append(time.perf_counter() - t)
  row.update(batch=batch, s_all=secs, s=statistics.median(secs), images_per_s=batch / statistics.median(secs))
  if jax.default_backend() == 'cpu':
    row.update(peak_rss_gib=meter.peak / GIB, step_rss_gib=meter.rise / GIB)
  peak = device_peak_bytes()
  if peak is not None:
    row['device_peak_gib'] = peak / GIB
  return row


def bench(args) -> list[dict]:
  options, canvas, smoke = xla_options.compiler_options(), tuple(args.canvas), args.smoke
  base = dict(kind='timing', model=args.model, canvas=f'{canvas[0]}x{canvas[1]}', backend=jax.default_backend(),
              device=jax.devices()[0].device_kind, threads=len(os.sched_getaffinity(0)), jax=jax.__version__,
              smoke=smoke, repeats=args.repeats, warmup=args.warmup)
  model = create_model(args.model, smoke, unroll=6)  # unroll: the trainer's default (configs/default.py)
  params = init_params(model)
  rows, keep, last, start = [], [None], None, time.perf_counter()
  for b in args.eval_batch:  # smallest first: the device's running peak (see the module docstring)
    batch = synthetic_batch(b, canvas, seed=10 + b)
    row = dict(base, phase=f'eval_b{b}')
    if b == args.eval_batch[0] and not args.skip_flops:
      row['gflops_per_image'] = eval_gflops(args.model, smoke, canvas)
    rows.append(measure(eval_runner(model, params, batch, smoke, options, row, keep), b, args, row))
    row['elapsed_s'] = time.perf_counter() - start
    print(json.dumps(row), flush=True)
    last = (keep[0], batch)
    jax.clear_caches()
    host_memory.release_freed_memory()
  row = dict(base, phase='host', host_rle=HAVE_PYCOCOTOOLS, from_eval_batch=len(last[1]['image']))
  rows.append(measure(host_runner(*last, row), len(last[1]['image']), args, row))
  row['elapsed_s'] = time.perf_counter() - start
  print(json.dumps(row), flush=True)
  row = dict(base, phase='train')
  batch = synthetic_batch(args.train_batch, canvas)
  row['gt_per_image'] = float(batch['box_valid'].sum()) / args.train_batch
  rows.append(measure(train_runner(model, params, batch, smoke, options, row), args.train_batch, args, row))
  row['elapsed_s'] = time.perf_counter() - start
  print(json.dumps(row), flush=True)
  return rows


def print_table(rows: list[dict]):
  r0 = rows[0]
  mem = 'peak RSS GiB (step rise)' if r0['backend'] == 'cpu' else 'device peak GiB (running)'
  print(f"\n{r0['model']} on a {r0['canvas']} canvas, float32, {r0['backend']} ({r0['device']}, {r0['threads']} "
        f"threads); median of {r0['repeats']} after {r0['warmup']} warm-up")
  print(f'| phase | batch | img/s | s per call (each repetition) | compile s | {mem} | XLA temp GiB | notes |')
  print('|---|---:|---:|---|---:|---:|---:|---|')
  for r in sorted(rows, key=lambda r: ('train', 'eval', 'host').index(r['phase'].split('_')[0])):
    memory = (f"{r['peak_rss_gib']:.2f} ({r['step_rss_gib']:.2f})" if 'peak_rss_gib' in r
              else f"{r.get('device_peak_gib', float('nan')):.2f}")
    temp = f"{r['xla_temp_gib']:.2f}" if r.get('xla_temp_gib') is not None else '-'
    notes = {'train': lambda: f"loss {r['loss']:.3f}, {r['gt_per_image']:.1f} GTs/img",
             'eval': lambda: f"{r['detections_per_image']:.0f} det/img" + (
                 f", XLA {r['gflops_per_image']:.4g} GFLOP/img = {r['gflops_per_image'] / 2:.4g} GMACs" if r.get('gflops_per_image') else ''),
             'host': lambda: f"paste{' + RLE' if r['host_rle'] else ' only'}, per image of eval batch "
                             f"{r['from_eval_batch']}"}[r['phase'].split('_')[0]]()
    secs = ', '.join(f'{s:.3f}' for s in r['s_all'])
    print(f"| {r['phase']} | {r['batch']} | {r['images_per_s']:.3f} | {r['s']:.3f} ({secs}) | {r['compile_s']:.1f} "
          f'| {memory} | {temp} | {notes} |')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--model', default='maskrcnn_hatnet_tiny', help="a 'maskrcnn_*' model")
  parser.add_argument('--canvas', default='800,1344', help='h,w (multiples of 32)')
  parser.add_argument('--train_batch', type=int, default=2, help="images per train step (mmdet's per GPU: 2)")
  parser.add_argument('--eval_batch', default='1,2', help='eval batch sizes (comma-separated)')
  parser.add_argument('--warmup', type=int, default=1, help='untimed calls after compiling')
  parser.add_argument('--repeats', type=int, default=3, help='timed calls (median)')
  parser.add_argument('--skip_flops', action='store_true', help="no XLA cost analysis of the eval program")
  parser.add_argument('--smoke', action='store_true', help=':tiny widths, a 96x96 canvas, 1 repetition')
  parser.add_argument('--json_out', default='', help='append the JSON lines to this file')
  add_host_memory_flag(parser)
  args = parser.parse_args(argv)
  apply_host_memory_flag(args, from_command_line=argv is None)
  if args.smoke:
    args.canvas, args.eval_batch, args.warmup, args.repeats = '96,96', '1,2', 0, 1
  if args.model not in models.names() or models.family(args.model)[1] is not models.MaskRCNN:
    raise ValueError(f"--model: {args.model!r} is not a Mask R-CNN; use a name like 'maskrcnn_hatnet_tiny'")
  args.canvas = [int(v) for v in args.canvas.split(',')]
  args.eval_batch = sorted(int(v) for v in args.eval_batch.split(',') if v)
  if (len(args.canvas) != 2 or any(v < 64 or v % SIZE_DIVISOR for v in args.canvas) or not args.eval_batch
      or min(args.eval_batch) < 1 or args.repeats < 1 or args.warmup < 0
      or args.train_batch % DETECTION['images_per_group']):
    raise ValueError(f'--canvas must be h,w, multiples of {SIZE_DIVISOR} >= 64; --eval_batch sizes >= 1; --repeats '
                     f">= 1; --warmup >= 0; --train_batch a multiple of {DETECTION['images_per_group']}; got "
                     f'canvas={args.canvas}, eval_batch={args.eval_batch}, repeats={args.repeats}, '
                     f'warmup={args.warmup}, train_batch={args.train_batch}')
  start = time.perf_counter()
  rows = bench(args)
  if args.json_out:
    with open(args.json_out, 'a') as f:
      f.writelines(json.dumps(r) + '\n' for r in rows)
  print_table(rows)
  print(f'total {time.perf_counter() - start:.0f} s', flush=True)
  return rows


if __name__ == '__main__':
  main()
