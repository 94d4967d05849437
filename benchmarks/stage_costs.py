"""A GPU roofline on paper: FLOPs and bytes of each part of a HAT-Net train step and forward (XLA's cost
analysis of LOWERED functions, nothing compiled or run), the H100/H200 time each part cannot beat, the
predicted step time and MFU ceiling, against a measured GPU row.

    python benchmarks/stage_costs.py --model=hatnet_tiny --json_out=/tmp/stage_costs.jsonl
    python benchmarks/stage_costs.py --model=hatnet_large
    python benchmarks/stage_costs.py --dims=16,32,48,64 --head_dim=16 --depths=1,1,2,1 --batch_size=2 \\
        --image_size=64                                                  # a smoke run (the test)

The model is the trainer's (configs/default.py: bf16 compute, f32 parameters, drop path 0.1, Mixup/CutMix,
AdamW) with the paths a GPU takes: XLA's grouped convolution for the depthwise, XLA's attention (what
jax.nn.dot_product_attention's default picks, also on GPU) and XLA's GroupNorm (models.xla_paths' GPU
choices), every stage unrolled so the cost analysis sees every block (it counts a loop body once).

Parts. Each part is its own jitted function of the model's own modules on the activation shapes it sees in
the step, lowered twice: forward (eval mode) and train (forward + VJP, in train mode: drop path's masks).
Per block (x its stage's depth): H-MHSA's GroupNorms, the qkv / q / kv / proj matmuls, window attention,
pooling (+ its GroupNorm), pooled global attention (stage 4: plain MHSA), the inverted residual's two
GroupNorms, fc1, SiLU -> depthwise -> SiLU, fc2, and the two residual adds with drop path. Also the stem,
the patch embeds (down2..4: conv + GroupNorm), each unrolled stage's parameter slices (the trainer's
unrolled stage slices a stacked tree; their transpose pads and adds the gradients), the head (pool, dropout,
linear), the loss, Mixup/CutMix and the optimizer (global norms, AdamW, the finite-step guard). The whole
step (the trainer's jitted train step) and the whole forward are lowered as well: 'other' is whole - sum,
and each block lowered whole checks its parts the same way.

Figures per part: GFLOP (XLA's count: 2 per multiply-add, 1 per element-wise op), GB accessed by XLA's count
of the unfused lowering (every HLO op's operands + result: an over-count, fusion removes most of it), the
minimal GB a kernel per part must move: forward in + out + weights, train 3 in + 2 out + 3 weights (forward;
backward reads the saved input, the output gradient and the weights, writes the input and weight
gradients; a part without input gradient: 2 in), activations at the dtypes the bf16 model gives them (the
residual stream and GroupNorm outputs f32, matmul outputs bf16), weights at bf16. Intensity = GFLOP / minimal
GB; the roofline time max(flops / peak, minimal bytes / bandwidth) with peak 989 TFLOP/s (dense bf16) and
3.35 TB/s (H100 SXM) or 4.8 TB/s (H200). Summed: the predicted step time (no part can beat its own bound,
and kernels do not overlap), the MFU ceiling = step FLOPs / (peak x that time), and the measured row's MFU.

Prints a table per part and per kind, and one JSON line (also appended to --json_out). Needs no GPU and no
tensorflow; a few minutes on a 2-core CPU at batch 128.
"""
import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hatnet_jax import layout, models, tasks  # noqa: E402
from hatnet_jax.models import layers  # noqa: E402
from hatnet_jax.models.backbone import attention  # noqa: E402
from hatnet_jax.models.backbone.hatnet import Block  # noqa: E402
from hatnet_jax.training import experiment, steps  # noqa: E402
from train_setup import NUM_CLASSES, trainer_config  # noqa: E402

PEAK_FLOPS = 989e12  # H100/H200 SXM dense bf16 tensor-core peak
BANDWIDTH = {'h100': 3.35e12, 'h200': 4.8e12}
MEASURED = {('hatnet_tiny', 128): ('h200', 128 / 3826)}  # BENCHMARKS.md, GPU: 3,826 img/s train, bf16
F32, BF16 = jnp.float32, jnp.bfloat16
GPU_PATHS = dict(depthwise_impl='conv', attention_impl='xla', norm_impl='xla', unroll=True)


def nbytes(tree, itemsize: int | None = None) -> int:
  """Bytes of the arrays of a pytree (each at `itemsize` bytes per element if given)."""
  return sum(int(x.size) * (itemsize or jnp.dtype(x.dtype).itemsize) for x in jax.tree.leaves(tree))


def abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def xla_cost(fn, *args) -> tuple[float, float]:
  """(flops, bytes accessed) of XLA's cost analysis of fn lowered on these (abstract) arguments."""
  cost = jax.jit(fn).lower(*args).cost_analysis()
  return float(cost.get('flops', 0.0)), float(cost.get('bytes accessed', 0.0))


def part(name: str, kind: str, count: int, fn, params, x, *extra, grad_x: bool = True, train_fn=None,
         extra_train=None) -> tuple[dict, object]:
  """Forward and train costs of y = fn(params, x, *extra), run `count` times per step; also y's shape.
  train_fn(params, x, *extra_train) is the train-mode function (default fn with the same extra)."""
  train_fn = train_fn or fn
  extra_train = extra if extra_train is None else extra_train
  y = jax.eval_shape(lambda p, x: fn(p, x, *extra), params, x)
  ff, fb = xla_cost(lambda p, x: fn(p, x, *extra), params, x)

  def vjp(p, x, g):  # y is returned too: else the forward of a linear part would be dead code
    if grad_x:
      y, back = jax.vjp(lambda p, x: train_fn(p, x, *extra_train), p, x)
    else:
      y, back = jax.vjp(lambda p: train_fn(p, x, *extra_train), p)
    return y, back(g)
  tf, tb = xla_cost(vjp, params, x, y)
  i, o, w = nbytes(x), nbytes(y), nbytes(params, 2)
  return dict(name=name, kind=kind, count=count,
              fwd=dict(flops=ff, bytes_xla=fb, bytes_min=i + o + w),
              train=dict(flops=tf, bytes_xla=tb, bytes_min=(3 if grad_x else 2) * i + 2 * o + 3 * w)), y


def step_part(name: str, kind: str, fn, *args, bytes_min: float) -> dict:
  """A train-only part (Mixup, optimizer): its cost once per step."""
  f, b = xla_cost(fn, *args)
  return dict(name=name, kind=kind, count=1, fwd=None, train=dict(flops=f, bytes_xla=b, bytes_min=bytes_min))


def sum_costs(rows, mode: str) -> dict:
  return {k: sum(r[mode][k] * r['count'] for r in rows if r[mode]) for k in ('flops', 'bytes_xla', 'bytes_min')}



def gn(p, x):
  return layers.group_norm(None, F32, 'xla').apply({'params': p}, x)


def dense(n, bias=True):
  return lambda p, x: layers.dense(n, use_bias=bias, dtype=BF16, param_dtype=F32).apply({'params': p}, x)


def conv_s2(n):  # HATNet._conv: the stem's and the patch embeds' 3x3 stride-2 convolutions
  return lambda p, x: nn.Conv(n, (3, 3), strides=2, padding=((1, 1), (1, 1)), dtype=BF16,
                              param_dtype=F32).apply({'params': p}, x)


def block_parts(s: str, bp, x, spec: dict, depth: int, rate, key) -> tuple[list, dict]:
  """The parts of one block of stage `s` (H-MHSA, inverted residual, residual adds), each `depth` times per
  step, and the check: the whole Block lowered against the sum of its parts."""
  b, h, w, c = x.shape
  heads, g, r = c // spec['head_dim'], spec['grid_size'], spec['ds_ratio']
  a, cv, rows = bp['attn'], bp['conv'], []

  def add(name, kind, fn, params, inp, **kw):
    row, y = part(f'{s}/{name}', kind, depth, fn, params, inp, **kw)
    rows.append(row)
    return y

  def attend(q, k, v):
    return attention._attend(q, k, v, None, 'xla')

  y = add('attn/norm', 'GroupNorm', gn, a['norm'], x)
  qkv = add('attn/qkv', 'matmul', dense(3 * c), a['qkv'], y)
  if g > 1:
    win = add('attn/window attention', 'attention', lambda p, t: attention.local_attention(t, heads, g, 'xla'),
              {}, qkv)
    xg = add('attn/grid_norm (+add)', 'GroupNorm', lambda p, t: gn(p, t[0] + t[1]), a['grid_norm'], (x, win))
    q = add('attn/q', 'matmul', dense(c), a['q'], xg)
    pooled = add('attn/pool + ds_norm', 'GroupNorm', lambda p, t: gn(p, layers.avg_pool(t, r)), a['ds_norm'], xg)
    kv = add('attn/kv', 'matmul', dense(2 * c), a['kv'], pooled)

    def glob(p, t):
      q, kv, xg = t
      kv = kv.reshape(b, -1, 2, heads, c // heads)
      out = attend(q.reshape(b, h * w, heads, c // heads), kv[:, :, 0], kv[:, :, 1])
      return out.reshape(b, h, w, c) + xg
    y = add('attn/pooled attention (+add)', 'attention', glob, {}, (q, kv, xg))
  else:
    def mhsa(p, t):
      t = t.reshape(b, h * w, 3, heads, c // heads)
      return attend(t[:, :, 0], t[:, :, 1], t[:, :, 2]).reshape(b, h, w, c)
    y = add('attn/global attention', 'attention', mhsa, {}, qkv)
  ya = add('attn/proj', 'matmul', dense(c), a['proj'], y)
  y = add('conv/norm1', 'GroupNorm', gn, cv['norm1'], x)  # x + ya in the block: the same shape
  y = add('conv/fc1', 'matmul', dense(c * spec['expansion'], False), cv['fc1'], y)
  dw = layers.DepthwiseConv(spec['kernel_size'], 'conv', BF16, F32, silu_around=True)
  y = add('conv/SiLU-depthwise-SiLU', 'depthwise', lambda p, t: dw.apply({'params': p}, t), cv['dwconv'], y)
  y = add('conv/fc2', 'matmul', dense(c, False), cv['fc2'], y)
  yc = add('conv/norm2', 'GroupNorm', gn, cv['norm2'], y)

  def residuals(train):  # Block: x + DropPath(attn), then + DropPath(inverted residual)
    def fn(p, t):
      x, ya, yc = t
      k1, k2 = jax.random.split(key)
      x1 = x + (_drop(ya, rate, k1) if train else ya)
      return x1, x1 + (_drop(yc, rate, k2) if train else yc)
    return fn
  add('residual adds + drop path', 'element-wise', residuals(False), {}, (x, ya, yc), train_fn=residuals(True))

  fwd = lambda p, x: Block(train=False, **spec).apply({'params': p}, x, rate)[0]
  trn = lambda p, x: Block(train=True, **spec).apply({'params': p}, x, rate, rngs={'dropout': key})[0]
  whole, _ = part(f'{s}/block', 'block', depth, fwd, bp, x, train_fn=trn)
  return rows, {m: dict(whole=whole[m], parts=sum_costs([dict(r, count=1) for r in rows], m)) for m in ('fwd', 'train')}


def _drop(y, rate, key):
  """layers.drop_path's arithmetic (timm DropPath) on an explicit key."""
  keep = 1.0 - rate
  mask = jax.random.bernoulli(key, keep, (y.shape[0],) + (1,) * (y.ndim - 1))
  return jnp.where(mask, y / jnp.asarray(keep, y.dtype), jnp.zeros((), y.dtype))



def model_parts(exp, batch_size: int, image_size: int) -> tuple[list, dict]:
  """Every part of the step in order (stem, stages with their patch embeds, head, loss, Mixup, optimizer)
  and the per-block checks."""
  model, v = exp.model, exp.model.variant
  params = abstract(exp.abstract_state.params)
  key, rate = jax.random.PRNGKey(0), jnp.float32(model.drop_path_rate)
  rows, checks = [], {}

  def add(name, kind, fn, p, x, **kw):
    row, y = part(name, kind, 1, fn, p, x, **kw)
    rows.append(row)
    return y

  x = jax.ShapeDtypeStruct((batch_size, image_size, image_size, 3), F32)
  y = add('stem/conv1', 'conv', conv_s2(v.stem_dim), params['stem_conv1'], x, grad_x=False)
  y = add('stem/norm + SiLU', 'GroupNorm', lambda p, t: nn.silu(gn(p, t)), params['stem_norm'], y)
  y = add('stem/conv2', 'conv', lambda p, t: conv_s2(v.dims[0])(p, t).astype(F32), params['stem_conv2'], y)
  for i, dim in enumerate(v.dims):
    s = f'stage{i + 1}'
    if i:
      y = add(f'{s}/patch embed conv (down{i + 1})', 'conv', conv_s2(dim), params[f'down{i + 1}_conv'], y)
      y = add(f'{s}/patch embed norm (down{i + 1})', 'GroupNorm', gn, params[f'down{i + 1}_norm'], y)
    stacked, depth = params[s]['blocks'], v.depths[i]
    row, _ = part(f'{s}/parameter slices (unrolled)', 'parameters', 1,
                  lambda p, t, d=depth: [jax.tree.map(lambda a, j=j: a[j], p) for j in range(d)], stacked,
                  jax.ShapeDtypeStruct((), F32), grad_x=False)
    row['fwd']['bytes_min'] = row['train']['bytes_min'] = 0.0  # a kernel reads its block's slice in place
    rows.append(row)
    spec = dict(dim=dim, head_dim=v.head_dim, grid_size=v.grid_sizes[i], ds_ratio=v.ds_ratios[i],
                expansion=v.expansions[i], kernel_size=v.kernel_sizes[i], drop_rate=model.drop_rate,
                attention_impl='xla', depthwise_impl='conv', norm_impl='xla', dtype=BF16, param_dtype=F32)
    block = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), stacked)
    block_rows, checks[s] = block_parts(s, block, y, spec, depth, rate, key)
    rows += block_rows

  def head(train):
    def fn(p, t):
      t = t.mean(axis=(1, 2))
      if train and model.head_drop_rate:
        t = nn.Dropout(model.head_drop_rate).apply({}, t, deterministic=False, rngs={'dropout': key})
      return nn.Dense(model.num_classes, dtype=BF16, param_dtype=F32).apply({'params': p}, t).astype(F32)
    return fn
  logits = add('head (pool, dropout, linear)', 'matmul', head(False), params['head'], y, train_fn=head(True))
  label = jnp.zeros((batch_size,), jnp.int32)

  def loss(p, t):  # Classification.train_loss on the logits
    logits, target = t[0], jax.lax.stop_gradient(t[1])
    value = jnp.mean(optax.softmax_cross_entropy(logits.astype(F32), target))
    return value, jnp.mean((jnp.argmax(logits, axis=-1) == label).astype(F32))
  add('loss', 'element-wise', loss, {}, (logits, logits))
  rows[-1]['fwd'] = None  # the forward (eval) is the model's alone

  batch = dict(image=x, label=jax.ShapeDtypeStruct((batch_size,), jnp.int32))
  rows.append(step_part('Mixup/CutMix', 'element-wise',
                        lambda k, b: exp.task.prepare_train_batch(k, b, model.num_classes), key, batch,
                        bytes_min=2 * nbytes(x)))
  state = abstract(exp.abstract_state)

  def optimizer(params, opt_state, grads):  # steps.train_step after the gradients
    grad_norm = steps.global_norm(grads)
    updates, new_opt = exp.tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    ok = jnp.isfinite(grad_norm) & jnp.isfinite(steps.global_norm(new_params))
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
    return keep(new_params, params), keep(new_opt, opt_state)
  # read grads, params, mu, nu; write params, mu, nu: 7 f32 passes over the parameters
  rows.append(step_part('optimizer (norms, AdamW, guard)', 'optimizer', optimizer, state.params,
                        state.opt_state, state.params, bytes_min=7 * nbytes(state.params)))
  return rows, checks


def create_experiment(args) -> experiment.Experiment:
  """The trainer's experiment (bf16 compute, f32 parameters) on XLA's GPU paths, every stage unrolled."""
  ns = argparse.Namespace(model=args.model, image_size=args.image_size)
  config = trainer_config(ns, 'bfloat16', False, 'xla', args.batch_size)
  with config.unlocked():
    config.model.update(GPU_PATHS)
    for field in ('dims', 'depths'):
      if getattr(args, field):
        config.model[field] = tuple(int(n) for n in getattr(args, field).split(','))
    if args.head_dim:
      config.model.head_dim = args.head_dim
  facts = tasks.DatasetFacts(name='synthetic', num_classes=NUM_CLASSES, num_train=1000 * args.batch_size,
                             num_eval=0)
  return experiment.Experiment.create(config, mesh=layout.create_mesh(jax.local_devices()[:1]), facts=facts)


def whole_costs(exp, batch_size: int, image_size: int) -> dict:
  """XLA's cost of the trainer's whole train step and of the model's whole forward (eval mode)."""
  sharding = layout.data_sharding(exp.mesh)
  batch = dict(image=jax.ShapeDtypeStruct((batch_size, image_size, image_size, 3), F32, sharding=sharding),
               label=jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=sharding))
  cost = exp.train_step.lower(exp.abstract_state, batch).cost_analysis()
  fwd = xla_cost(lambda p, x: exp.model.apply({'params': p}, x, train=False), abstract(exp.abstract_state.params),
                 jax.ShapeDtypeStruct(batch['image'].shape, F32))
  return dict(train=dict(flops=float(cost['flops']), bytes_xla=float(cost['bytes accessed'])),
              fwd=dict(flops=fwd[0], bytes_xla=fwd[1]))



def bound_s(c: dict, bandwidth: float, key: str = 'bytes_min') -> float:
  return max(c['flops'] / PEAK_FLOPS, c[key] / bandwidth)


def roofline(rows: list, whole: dict, mode: str) -> dict:
  """Sums, 'other' (whole - parts), predicted times and MFU ceilings of one mode ('train' or 'fwd')."""
  parts = sum_costs(rows, mode)
  other = {k: whole[mode][k] - parts[k] for k in ('flops', 'bytes_xla')}
  out = dict(whole=whole[mode], parts=parts, other=other,
             other_fraction={k: other[k] / whole[mode][k] for k in other})
  for gpu, bw in BANDWIDTH.items():
    t = sum(r['count'] * bound_s(r[mode], bw) for r in rows if r[mode]) + max(other['flops'], 0) / PEAK_FLOPS
    t_xla = sum(r['count'] * bound_s(r[mode], bw, 'bytes_xla') for r in rows if r[mode])
    out[gpu] = dict(predicted_ms=t * 1e3, mfu_ceiling=whole[mode]['flops'] / (PEAK_FLOPS * t),
                    compute_only_ms=whole[mode]['flops'] / PEAK_FLOPS * 1e3, unfused_bytes_ms=t_xla * 1e3)
  return out


def by_kind(rows: list, mode: str) -> dict:
  kinds = {}
  for r in rows:
    if r[mode]:
      k = kinds.setdefault(r['kind'], dict(flops=0.0, bytes_xla=0.0, bytes_min=0.0, h100_ms=0.0, h200_ms=0.0))
      for f in ('flops', 'bytes_xla', 'bytes_min'):
        k[f] += r['count'] * r[mode][f]
      for gpu, bw in BANDWIDTH.items():
        k[f'{gpu}_ms'] += r['count'] * bound_s(r[mode], bw) * 1e3
  return kinds


def _row(name, count, c, h100_ms, h200_ms) -> str:
  intensity = c['flops'] / c['bytes_min'] if c['bytes_min'] else float('inf')
  bound = 'compute' if c['flops'] / PEAK_FLOPS >= c['bytes_min'] / BANDWIDTH['h100'] else 'memory'
  return (f'| {name} | {count} | {c["flops"] / 1e9:.1f} | {c["bytes_xla"] / 1e9:.2f} | {c["bytes_min"] / 1e9:.2f} | '
          f'{intensity:.0f} | {h100_ms:.3f} | {h200_ms:.3f} | {bound} |')


def report(r: dict) -> str:
  header = ['| part | x | GFLOP | GB (XLA, unfused) | GB (minimal) | flop/B | H100 ms | H200 ms | bound (H100) |',
            '|---|---:|---:|---:|---:|---:|---:|---:|---|']
  lines = []
  for mode, title in (('train', 'train step (forward + backward + optimizer)'), ('fwd', 'forward (eval)')):
    lines += ['', f'{r["model"]}, batch {r["batch_size"]}, {r["image_size"]} px, bf16: {title}; figures per step '
              '(x: times per step, included)'] + header
    for row in r['rows']:
      c = row[mode]
      if c:
        tot = {k: v * row['count'] for k, v in c.items()}
        lines.append(_row(row['name'], row['count'], tot, *(row['count'] * bound_s(c, bw) * 1e3
                                                             for bw in BANDWIDTH.values())))
    lines += ['', 'by kind'] + header
    for kind, k in sorted(r['kinds'][mode].items(), key=lambda kv: -kv[1]['h100_ms']):
      lines.append(_row(kind, '', k, k['h100_ms'], k['h200_ms']))
    s = r['roofline'][mode]
    lines.append(f'whole: {s["whole"]["flops"] / 1e9:.1f} GFLOP, {s["whole"]["bytes_xla"] / 1e9:.1f} GB (XLA); '
                 f'other (whole - parts): {s["other_fraction"]["flops"]:+.2%} of the FLOPs, '
                 f'{s["other_fraction"]["bytes_xla"]:+.2%} of the bytes')
    for gpu in BANDWIDTH:
      g = s[gpu]
      lines.append(f'{gpu.upper()}: predicted {g["predicted_ms"]:.2f} ms per step (compute alone '
                   f'{g["compute_only_ms"]:.2f} ms; with the unfused bytes {g["unfused_bytes_ms"]:.1f} ms): '
                   f'MFU ceiling {g["mfu_ceiling"]:.1%}')
  if r.get('measured'):
    m = r['measured']
    lines.append(f'measured ({m["gpu"].upper()}, BENCHMARKS.md): {m["step_ms"]:.1f} ms per train step, MFU '
                 f'{m["mfu"]:.1%}; {m["step_ms"] / r["roofline"]["train"][m["gpu"]]["predicted_ms"]:.1f}x the '
                 'predicted step')
  return '\n'.join(lines)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--model', default='hatnet_tiny', choices=sorted(models.VARIANTS))
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--dims', default='', help='override the variant (smoke runs), e.g. 16,32,48,64')
  parser.add_argument('--depths', default='', help='override the variant, e.g. 1,1,2,1')
  parser.add_argument('--head_dim', type=int, default=0, help='override the variant')
  parser.add_argument('--json_out', default='', help='append the JSON line to this file')
  args = parser.parse_args(argv)
  t0 = time.perf_counter()
  exp = create_experiment(args)
  rows, checks = model_parts(exp, args.batch_size, args.image_size)
  whole = whole_costs(exp, args.batch_size, args.image_size)
  r = dict(model=args.model, batch_size=args.batch_size, image_size=args.image_size, dims=args.dims,
           depths=args.depths, head_dim=args.head_dim, peak_flops=PEAK_FLOPS, bandwidth=BANDWIDTH, rows=rows,
           block_checks=checks, whole=whole,
           roofline={m: roofline(rows, whole, m) for m in ('train', 'fwd')},
           kinds={m: by_kind(rows, m) for m in ('train', 'fwd')})
  measured = MEASURED.get((args.model, args.batch_size))
  if measured and not (args.dims or args.depths or args.head_dim) and args.image_size == 224:
    gpu, step_s = measured
    r['measured'] = dict(gpu=gpu, step_ms=step_s * 1e3, mfu=whole['train']['flops'] / step_s / PEAK_FLOPS)
  r['seconds'] = time.perf_counter() - t0
  print(report(r))
  line = json.dumps(r)
  print(line, flush=True)
  if args.json_out:
    with open(args.json_out, 'a') as f:
      f.write(line + '\n')
  return r


if __name__ == '__main__':
  main()
