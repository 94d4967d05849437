"""Detection speed and cost at 1333x800: RetinaNet's forward GFLOPs (T/S/M/L), and hatnet_tiny RetinaNet's CPU
train step and evaluation against mmdet 3.3.0's RetinaNet in the same process.

    python benchmarks/detection_speed.py                  # the default run (~7-10 min on a quiet 2-core CPU)
    python benchmarks/detection_speed.py --smoke          # tiny widths, a 128x192 canvas, 1 repetition
    python benchmarks/detection_speed.py --skip_timing    # the GFLOPs table only

GFLOPs: XLA's cost analysis of the batch-1 forward (backbone + FPN + head, no post-processing), stages unrolled
(XLA counts a scan body once), on XLA's own depthwise/attention/GroupNorm paths (it cannot see into the native
kernels). XLA counts 2 flops per multiply-add (and none on a conv's zero padding); mmcv/mmengine's get_flops
and the papers count 1 (their "GFLOPs" are GMACs): the table gives XLA / 2 beside XLA; --mmdet_flops adds
mmengine's FlopAnalyzer (mmdet 3.3.0's get_flops.py) on mmdet's RetinaNet. Inputs: 800x1344 (1333x800 padded
to 32) and the exact 800x1333.

Timing (hatnet_tiny, float32, synthetic data in memory), repetitions interleaved with mmdet's:
  train  forward + backward + AdamW (lr 1e-4, weight decay 1e-4 on all: PVT's recipe) of the task's loss, one
         group of 2 images as mmdet per GPU, on a 800x1344 canvas at batch 2 (mmdet's per-GPU batch); 5 boxes
         per image padded to max_boxes 100; drop-path 0.1 in both.
  eval   forward + Detection.predict's post-processing (top-1000 per level, class-wise NMS, top-100), batch 1
         and 2. Both heads' class bias is logit(0.1) > score_thr: every level fills its top-1000, NMS gets ~5,000
         candidates (full load; our fixed-size NMS costs the same at any load).
  mmdet  RetinaNet on the official backbone (tests/references/torch_retinanet.py), NCHW eager: model.loss +
         torch AdamW; model.predict(rescale=True), mmcv-lite's missing NMS replaced by mmcv's batched_nms over
         tests/structures/reference_nms.py (torch/NumPy; its seconds are printed). torch threads = the CPUs
         this process may use, as XLA's CPU client.
JAX programs use the trainer's CPU compiler options; from the command line the process restarts with glibc's
huge-page tunable as main.py (torch shares it). Needs jax, flax, optax, not tensorflow, clu or ml_collections;
the mmdet parts need mmdet 3.3.0 and are skipped with a note without it.
"""
import argparse
import json
import math
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
from hatnet_jax.structures import dense_detections  # noqa: E402
from hatnet_jax.training import host_memory, xla_options  # noqa: E402
from hatnet_jax.tasks import detection_loss  # noqa: E402
from host_memory_flag import add_host_memory_flag, apply_host_memory_flag  # noqa: E402
from step_timing import time_steps_alternating  # noqa: E402

NUM_CLASSES = 80  # COCO
VARIANTS = ('retinanet_hatnet_tiny', 'retinanet_hatnet_small', 'retinanet_hatnet_medium', 'retinanet_hatnet_large')
# config.detection of configs/det_default.py as plain values (that needs ml_collections; a test compares them).
DETECTION = dict(strides=(8, 16, 32, 64, 128), octave_base_scale=4, scales_per_octave=3, ratios=(0.5, 1.0, 2.0),
                 pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0, focal_gamma=2.0, focal_alpha=0.25,
                 box_loss_weight=1.0, images_per_group=2, nms_pre=1000, score_thr=0.05, nms_iou=0.5,
                 max_per_img=100)
SIZE_DIVISOR, MAX_BOXES, BOXES_PER_IMAGE = 32, 100, 5
LR = WEIGHT_DECAY = 1e-4  # PVT's RetinaNet: AdamW 1e-4, weight decay 1e-4
CLS_PRIOR = 0.1  # every score starts above score_thr: post-processing at full load
# --smoke: a 1-block-per-stage HAT-Net with narrow stages and a narrow neck/head, on a small canvas.
SMOKE_VARIANT, SMOKE_CHANNELS = dict(dims=(16, 32, 48, 64), head_dim=16, depths=(1, 1, 1, 1), stem_dim=8), 32


def train_loss(model, params, batch, rng, cfg):
  """Detection.train_loss (hatnet_jax/tasks/detection.py) for a model without mutable state."""
  cls_maps, box_maps = model.apply({'params': params}, batch['image'], train=True, rngs={'dropout': rng})
  return detection_loss.retinanet_loss(cls_maps, box_maps, batch, cfg, model.num_classes, SIZE_DIVISOR)


def predict(model, params, batch, cfg) -> dict:
  """Detection.predict (hatnet_jax/tasks/detection.py): detections per image in original-image pixels."""
  cls_maps, box_maps = model.apply({'params': params}, batch['image'], train=False)
  anchors = detection_loss.level_anchors(cls_maps, cfg)
  return dense_detections.postprocess(cls_maps, box_maps, anchors, batch['image_size'], batch['scale'],
                                      nms_pre=cfg.nms_pre, score_thr=cfg.score_thr, iou_threshold=cfg.nms_iou,
                                      max_per_img=cfg.max_per_img)


def model_kwargs(smoke: bool) -> dict:
  return dict(SMOKE_VARIANT, neck_channels=SMOKE_CHANNELS, head_channels=SMOKE_CHANNELS) if smoke else {}


def variant_of(name: str, smoke: bool):
  return models.get_variant(name.removeprefix('retinanet_'), **(SMOKE_VARIANT if smoke else {}))


def synthetic_batch(batch: int, canvas: tuple[int, int], seed: int = 0) -> dict:
  """Normalised random images on the canvas; image i's resized extent is the canvas less 11 + 40 i columns
  (1333 wide on a 1344 canvas) and 30 i rows; BOXES_PER_IMAGE boxes of 16-400 px sides (clipped to the
  extent) padded to MAX_BOXES; scale as from an original 1.6x smaller."""
  rng = np.random.RandomState(seed)
  h, w = canvas
  sizes = np.array([[h - 30 * i, w - min(11 + 40 * i, w // 4)] for i in range(batch)], np.int32)
  boxes = np.zeros((batch, MAX_BOXES, 4), np.float32)
  for i, (ih, iw) in enumerate(sizes):
    side = rng.uniform(16, min(400, ih, iw), (BOXES_PER_IMAGE, 2))
    xy = rng.uniform(0, 1, (BOXES_PER_IMAGE, 2)) * (np.array([iw, ih]) - side)
    boxes[i, :BOXES_PER_IMAGE] = np.concatenate([xy, xy + side], axis=1)
  labels = np.zeros((batch, MAX_BOXES), np.int32)
  labels[:, :BOXES_PER_IMAGE] = rng.randint(0, NUM_CLASSES, (batch, BOXES_PER_IMAGE))
  valid = np.repeat(np.arange(MAX_BOXES)[None] < BOXES_PER_IMAGE, batch, axis=0)
  return dict(image=rng.randn(batch, h, w, 3).astype(np.float32), boxes=boxes, labels=labels, box_valid=valid,
              image_size=sizes, scale=np.full((batch, 2), 1.6, np.float32))


def forward_cost(name: str, hw: tuple[int, int], **kw) -> dict:
  """XLA's cost analysis of the batch-1 forward: params, flops (XLA's: 2 per multiply-add) and GMACs."""
  model = models.create(name, num_classes=NUM_CLASSES, unroll=True, **models.xla_paths(), **kw)
  variables = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 128, 128, 3), jnp.float32))
  x = jax.ShapeDtypeStruct((1, *hw, 3), jnp.float32)
  cost = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, x).cost_analysis()
  flops = cost['flops'] if cost else None  # None: no pre-compilation analysis on this backend
  params = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables))
  return dict(model=name, input=f'{hw[0]}x{hw[1]}', params_m=params / 1e6, xla_gflops=flops and flops / 1e9,
              gmacs=flops and flops / 2e9)


def mmdet_gmacs(retina, hw: tuple[int, int]) -> float:
  """mmengine's FlopAnalyzer (mmdet's get_flops.py; 1 per multiply-add) of mmdet's forward, tensor mode."""
  import torch  # pylint: disable=g-import-not-at-top
  from mmengine.analysis import get_model_complexity_info  # pylint: disable=g-import-not-at-top
  retina.eval()
  out = get_model_complexity_info(retina, None, inputs=(torch.zeros(1, 3, *hw),), show_table=False, show_arch=False)
  return out['flops'] / 1e9


def build_mmdet(variant, smoke: bool, drop_path_rate: float):
  """mmdet's RetinaNet on the reference backbone (tests/references/torch_retinanet.py) with mmdet's init, the
  smoke widths where asked, drop-path as ours, the class bias at logit(CLS_PRIOR); NMS patched to pure torch."""
  import torch  # pylint: disable=g-import-not-at-top
  from tests.references import mmseg_stub, torch_retinanet  # pylint: disable=g-import-not-at-top
  mmseg_stub.install()
  from mmdet.models.dense_heads import base_dense_head  # pylint: disable=g-import-not-at-top
  from mmdet.registry import MODELS  # pylint: disable=g-import-not-at-top
  from mmdet.utils import register_all_modules  # pylint: disable=g-import-not-at-top
  register_all_modules()
  MODELS.register_module(name=torch_retinanet.BACKBONE, module=torch_retinanet.HATNetBackbone, force=True)
  cfg = torch_retinanet.config(variant, NUM_CLASSES)
  if smoke:
    cfg.neck.out_channels = cfg.bbox_head.in_channels = cfg.bbox_head.feat_channels = SMOKE_CHANNELS
  torch.manual_seed(0)
  model = MODELS.build(cfg)
  model.init_weights()
  blocks = [b for stage in model.backbone.blocks for b in stage]
  for block, rate in zip(blocks, np.linspace(0, drop_path_rate, len(blocks))):
    block.drop_path.p = float(rate)
  with torch.no_grad():
    model.bbox_head.retina_cls.bias.fill_(math.log(CLS_PRIOR / (1 - CLS_PRIOR)))
  base_dense_head.batched_nms = _mmcv_batched_nms
  return model


NMS_SECONDS = [0.0]  # time spent in the pure torch/NumPy NMS that stands in for mmcv's compiled kernel


def _mmcv_batched_nms(boxes, scores, idxs, nms_cfg, class_agnostic=False):
  """mmcv 2.x's batched_nms below split_thr (boxes offset by label x (max + 1), one NMS) over the structures
  tests' torchvision CPU NMS transcription (mmcv-lite has no compiled nms); its time adds up in NMS_SECONDS."""
  import torch  # pylint: disable=g-import-not-at-top
  from tests.structures import reference_nms  # pylint: disable=g-import-not-at-top
  assert not class_agnostic and boxes.shape[0] < nms_cfg.get('split_thr', 10000)
  t = time.perf_counter()
  offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
  keep = reference_nms.nms(boxes + offsets[:, None], scores, nms_cfg['iou_threshold'])
  NMS_SECONDS[0] += time.perf_counter() - t
  return torch.cat([boxes[keep], scores[keep][:, None]], -1), keep


def mmdet_inputs(batch: dict):
  """(NCHW tensor, DetDataSamples) of a synthetic batch: valid boxes as gt_instances, mmdet's metainfo."""
  import torch  # pylint: disable=g-import-not-at-top
  from mmdet.structures import DetDataSample  # pylint: disable=g-import-not-at-top
  from mmengine.structures import InstanceData  # pylint: disable=g-import-not-at-top
  images, samples = torch.from_numpy(np.ascontiguousarray(batch['image'].transpose(0, 3, 1, 2))), []
  for i in range(images.shape[0]):
    h, w = (int(v) for v in batch['image_size'][i])
    sy, sx = (float(v) for v in batch['scale'][i])
    sample = DetDataSample(metainfo=dict(img_shape=(h, w), pad_shape=(-(-h // 32) * 32, -(-w // 32) * 32),
                                         batch_input_shape=tuple(images.shape[2:]), scale_factor=(sx, sy),
                                         ori_shape=(round(h / sy), round(w / sx))))
    keep = batch['box_valid'][i]
    sample.gt_instances = InstanceData(bboxes=torch.from_numpy(batch['boxes'][i][keep]),
                                       labels=torch.from_numpy(batch['labels'][i][keep].astype(np.int64)))
    samples.append(sample)
  return images, samples


def _ours_train(model, params, batch, cfg, options, out):
  """Our train step on `batch` (AdamW on the task's loss), compiled; returns a function that runs one step."""
  import optax  # pylint: disable=g-import-not-at-top
  tx = optax.adamw(LR, b1=0.9, b2=0.999, eps=1e-8, weight_decay=WEIGHT_DECAY)

  def step(state, batch):
    params, opt_state, rng = state
    rng, dropout = jax.random.split(rng)
    (loss, _), grads = jax.value_and_grad(lambda p: train_loss(model, p, batch, dropout, cfg), has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, rng), loss

  holder = [(jax.tree.map(jnp.copy, params), tx.init(params), jax.random.key(1))]
  t = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=0, compiler_options=options).lower(holder[0], batch).compile()
  out['train_compile_s'] = time.perf_counter() - t
  host_memory.release_freed_memory()  # as the trainer does after compiling
  batch = jax.device_put(batch)

  def run():
    holder[0], loss = compiled(holder[0], batch)
    out['train_loss'] = float(loss)  # blocks

  return run


def _mmdet_train(retina, batch, out):
  import torch  # pylint: disable=g-import-not-at-top
  opt = torch.optim.AdamW(retina.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, betas=(0.9, 0.999), eps=1e-8)
  images, samples = mmdet_inputs(batch)

  def run():
    retina.train()
    loss, _ = retina.parse_losses(retina.loss(images, samples))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    out['mmdet_train_loss'] = loss.item()

  return run


def _ours_infer(model, params, batch, cfg, options, out):
  batch = {k: batch[k] for k in ('image', 'image_size', 'scale')}
  b = len(batch['image'])
  t = time.perf_counter()
  infer = jax.jit(lambda p, x: predict(model, p, x, cfg), compiler_options=options).lower(params, batch).compile()
  out[f'infer_b{b}_compile_s'] = time.perf_counter() - t
  host_memory.release_freed_memory()
  batch = jax.device_put(batch)

  def run():
    out[f'ours_infer_b{b}_detections'] = int(np.asarray(infer(params, batch)['valid']).sum()) / b  # blocks

  return run


def _mmdet_infer(retina, batch, out):
  import torch  # pylint: disable=g-import-not-at-top
  images, samples = mmdet_inputs(batch)
  b = len(samples)

  def run():
    retina.eval()
    NMS_SECONDS[0] = 0.0
    with torch.no_grad():
      results = retina.predict(images, samples, rescale=True)
    out[f'mmdet_infer_b{b}_detections'] = sum(len(r.pred_instances.scores) for r in results) / b
    out.setdefault(f'mmdet_infer_b{b}_nms_s_all', []).append(NMS_SECONDS[0])

  return run


def bench(args, with_mmdet: bool) -> dict:
  """hatnet_tiny RetinaNet's train step, then its evaluation at each batch size, each against mmdet's."""
  cfg, options = types.SimpleNamespace(**DETECTION), xla_options.compiler_options()
  name, canvas, threads = 'retinanet_hatnet_tiny', tuple(args.canvas), len(os.sched_getaffinity(0))
  model = models.create(name, num_classes=NUM_CLASSES, drop_path_rate=0.1, unroll=6, **model_kwargs(args.smoke))
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 128, 128, 3)))['params']
  bias = params['bbox_head']['retina_cls']['bias']
  params['bbox_head']['retina_cls']['bias'] = jnp.full_like(bias, math.log(CLS_PRIOR / (1 - CLS_PRIOR)))
  out = dict(model=name, canvas=f'{canvas[0]}x{canvas[1]}', train_batch=args.train_batch, threads=threads,
             backend=jax.default_backend(), jax=jax.__version__, smoke=args.smoke, repeats=args.repeats,
             warmup=args.warmup)
  retina = None
  if with_mmdet:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(threads)
    out['torch'], out['torch_threads'] = torch.__version__, torch.get_num_threads()
    retina = build_mmdet(variant_of(name, args.smoke), args.smoke, 0.1)
  train_batch = synthetic_batch(args.train_batch, canvas)
  fns = {'ours': _ours_train(model, params, train_batch, cfg, options, out)}
  if retina is not None:
    fns['mmdet'] = _mmdet_train(retina, train_batch, out)
  for who, secs in time_steps_alternating(fns, args.warmup, args.repeats, 1).items():
    out[f'{who}_train_step_s_all'] = secs
    out[f'{who}_train_step_s'] = statistics.median(secs)
    out[f'{who}_train_images_per_s'] = args.train_batch / statistics.median(secs)
  print('train step s per repetition:', {w: out[f'{w}_train_step_s_all'] for w in fns}, flush=True)
  fns = {}  # drops the train steps
  host_memory.release_freed_memory()
  for b in args.eval_batch:
    batch = synthetic_batch(b, canvas, seed=10 + b)
    fns[f'ours_infer_b{b}'] = _ours_infer(model, params, batch, cfg, options, out)
    if retina is not None:
      fns[f'mmdet_infer_b{b}'] = _mmdet_infer(retina, batch, out)
  for key, secs in time_steps_alternating(fns, args.warmup, args.repeats, 1).items():
    out[f'{key}_s_all'] = secs
    out[f'{key}_images_per_s'] = int(key.split('_b')[-1]) / statistics.median(secs)
  if retina is not None:
    out['train_ratio'] = out['ours_train_images_per_s'] / out['mmdet_train_images_per_s']
    for b in args.eval_batch:
      out[f'infer_b{b}_ratio'] = out[f'ours_infer_b{b}_images_per_s'] / out[f'mmdet_infer_b{b}_images_per_s']
  return out


def _mmdet_available() -> str:
  """'' if mmdet 3.3.0's RetinaNet can be built here, else why not."""
  try:
    from tests.references import mmseg_stub  # pylint: disable=g-import-not-at-top
    mmseg_stub.install()
    from mmdet.models.dense_heads import base_dense_head  # noqa: F401  pylint: disable=g-import-not-at-top
  except Exception as e:  # pylint: disable=broad-except
    return f'{type(e).__name__}: {e}'[:200]
  return ''


def print_tables(flops_rows, t):
  if flops_rows:
    print('\n| model | params M | input (h x w) | XLA GFLOP | GFLOPs = GMACs (mmcv convention) | mmengine GMACs |')
    print('|---|---:|---|---:|---:|---:|')
    for r in flops_rows:
      ref = f"{r['mmengine_gmacs']:.1f}" if r.get('mmengine_gmacs') else ''
      print(f"| {r['model']} | {r['params_m']:.1f} | {r['input']} | {r['xla_gflops']:.1f} | {r['gmacs']:.1f} | {ref} |")
  if not t:
    return
  bs = [k.split('_b')[1].split('_')[0] for k in t if k.startswith('ours_infer_b') and k.endswith('_images_per_s')]
  print(f"\n{t['model']} on a {t['canvas']} canvas, float32, {t['threads']} threads; medians of {t['repeats']} "
        f"interleaved repetitions after {t['warmup']} warm-up (all in the JSON line)")
  print(f"| | train step s (batch {t['train_batch']}) | train img/s | " + ' | '.join(f'eval img/s batch {b}' for b in bs)
        + ' |\n|---|---:|---:|' + '---:|' * len(bs))
  for who in [w for w in ('ours', 'mmdet') if f'{w}_train_step_s' in t]:
    print(f"| {who} | {t[f'{who}_train_step_s']:.2f} | {t[f'{who}_train_images_per_s']:.3f} | "
          + ' | '.join(f"{t[f'{who}_infer_b{b}_images_per_s']:.3f}" for b in bs) + ' |')
  if 'train_ratio' in t:
    print(f"| ours / mmdet | | {t['train_ratio']:.2f}x | " + ' | '.join(f"{t[f'infer_b{b}_ratio']:.2f}x" for b in bs)
          + ' |')
    for b in bs:
      print(f"mmdet eval batch {b}: {statistics.median(t[f'mmdet_infer_b{b}_nms_s_all']):.2f} s per call in the "
            "torch/NumPy NMS standing in for mmcv's compiled one (median; inside the eval time)")
  print(f"compile s: train {t['train_compile_s']:.1f}, " + ', '.join(f"eval batch {b} {t[f'infer_b{b}_compile_s']:.1f}"
                                                                     for b in bs))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--smoke', action='store_true', help='tiny widths, a 128x192 canvas, 1 repetition')
  parser.add_argument('--models', default=','.join(VARIANTS), help='GFLOPs table rows (comma-separated)')
  parser.add_argument('--shapes', default='800x1344,800x1333', help='GFLOPs inputs, h x w (comma-separated)')
  parser.add_argument('--mmdet_flops', default='retinanet_hatnet_tiny',
                      help="models to count with mmengine's FlopAnalyzer at the first shape ('' for none)")
  parser.add_argument('--canvas', default='800,1344', help='timing canvas h,w')
  parser.add_argument('--train_batch', type=int, default=2)
  parser.add_argument('--eval_batch', default='1,2')
  parser.add_argument('--warmup', type=int, default=1, help='untimed steps after compilation (each framework)')
  parser.add_argument('--repeats', type=int, default=2, help='timed, interleaved repetitions (median)')
  parser.add_argument('--skip_flops', action='store_true')
  parser.add_argument('--skip_timing', action='store_true')
  parser.add_argument('--skip_mmdet', action='store_true')
  parser.add_argument('--json_out', default='', help='append the JSON lines to this file')
  add_host_memory_flag(parser)
  args = parser.parse_args(argv)
  apply_host_memory_flag(args, from_command_line=argv is None)
  if args.smoke:
    args.models, args.shapes, args.canvas = 'retinanet_hatnet_tiny', '128x192', '128,192'
    args.eval_batch, args.warmup, args.repeats = '1', 0, 1
  args.canvas = [int(v) for v in args.canvas.split(',')]
  args.eval_batch = [int(v) for v in args.eval_batch.split(',')]
  why_not = 'by --skip_mmdet' if args.skip_mmdet else _mmdet_available()
  with_mmdet = not why_not
  print(f'mmdet comparison skipped: {why_not}' if why_not else 'mmdet comparison on', flush=True)
  rows, flops_rows, timing = [], [], None
  shapes = [tuple(int(v) for v in s.lower().split('x')) for s in args.shapes.split(',') if s]
  for name in [] if args.skip_flops else filter(None, args.models.split(',')):
    for hw in shapes:
      row = dict(forward_cost(name, hw, **model_kwargs(args.smoke)), kind='flops')
      if with_mmdet and hw == shapes[0] and name in args.mmdet_flops.split(','):
        row['mmengine_gmacs'] = mmdet_gmacs(build_mmdet(variant_of(name, args.smoke), args.smoke, 0.0), hw)
      flops_rows.append(row)
      print(json.dumps(row), flush=True)
    jax.clear_caches()
  rows += flops_rows
  if not args.skip_timing:
    timing = dict(bench(args, with_mmdet), kind='timing')
    print(json.dumps(timing), flush=True)
    rows.append(timing)
  if args.json_out:
    with open(args.json_out, 'a') as f:
      f.writelines(json.dumps(r) + '\n' for r in rows)
  print_tables(flops_rows, timing)
  return rows


if __name__ == '__main__':
  main()
