"""This machine's compute and memory limits, and where a model's train step stands against them (roofline).

    python benchmarks/roofline.py --model=hatnet_tiny
    python benchmarks/roofline.py --model=hatnet_small --batch_size=32 --skip_profile
    python benchmarks/roofline.py --model=hatnet_tiny --image_size=32 --batch_size=2 --steps=1 \\
        --matmul_sizes=256 --stream_mib=16 --skip_fused_bytes          # a smoke run

1. Limits. Peak: a float32 matmul (jit of jnp.dot on --matmul_sizes square matrices, best of --repeats) on
   the default device, which on CPU uses every core of the process's thread pool; torch.mm on the same
   sizes for reference when torch is importable. Memory bandwidth: streaming kernels over an f32 array
   of --stream_mib MiB, y = x * a + b written in place (the input is donated, so no fresh pages are
   touched) and a copy into a donated buffer, counting the bytes read plus written; the larger of the
   two is the roofline's bandwidth.
2. The step: the trainer's own train step (model_speed.setup: experiment.Experiment.create, synthetic
   batch, --batch_size per device), compiled, median of --steps timed steps after --warmup. Its FLOPs
   and bytes accessed come from XLA's cost analysis of the same step with the stages unrolled (XLA counts
   a scan body once): by default of the compiled (fused) unrolled step, one extra compilation that is
   never run; with --skip_fused_bytes of the lowered one, whose bytes count every unfused HLO op's
   operands and result (an over-count). On CPU that counted step takes XLA's depthwise and attention paths
   (XLA does not count the native kernels' custom calls): the FLOPs are the timed step's, its bytes an
   over-count of what the native kernels move. Then: achieved GFLOP/s and GB/s, arithmetic intensity
   (flops/byte), the roofline ceiling min(peak, intensity * bandwidth) and the fraction of peak.
3. Which ops bound it (unless --skip_profile): one step under jax.profiler.trace; the kernels are the
   trace's events of the step's HLO module (XLA's CPU thread pool lines, and the calling thread's)
   without the containers (while, call, conditional, ThunkExecutor) and the 'end:' markers. Each event
   is looked up in the compiled HLO text: matmul/conv when it is a dot or convolution or a fusion
   containing one (YNNPACK 'ynn_fusion's are either), otherwise memory-bound, split into reduction,
   data movement (copy, transpose, slices, pads, broadcasts, ...) and element-wise. Prints the time share
   of each class and the most expensive fusion kinds (the name without its '.N'), with their bytes per
   second (operand plus result bytes of each execution: an upper bound for in-place updates) and the
   model op (HLO op_name) of the costliest instance.

Prints a table and one JSON line (also appended to --json_out). Needs no tensorflow.
"""
import argparse
import collections
import dataclasses
import functools
import glob
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model_speed  # noqa: E402  (puts the repository root on sys.path)
from hatnet_jax import models  # noqa: E402

COMPUTE = 'matmul/conv'
MEMORY_CLASSES = ('element-wise', 'reduction', 'data movement')  # the memory-bound classes
CONTAINERS = ('while', 'call', 'conditional')
DATA_MOVEMENT = frozenset({
    'bitcast', 'broadcast', 'concatenate', 'copy', 'dynamic-slice', 'dynamic-update-slice', 'gather', 'iota',
    'pad', 'parameter', 'reshape', 'reverse', 'scatter', 'slice', 'transpose', 'constant', 'tuple',
    'get-tuple-element', 'bitcast-convert'})
DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4, 'u32': 4,
               'f32': 4, 's64': 8, 'u64': 8, 'f64': 8, 'c64': 8, 'c128': 16}


# ---------------------------------------------------------------- 1. limits

def _best_seconds(fn, repeats: int) -> float:
  """Fastest of `repeats` calls of `fn` (which blocks), after one untimed call."""
  fn()
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best


def jax_matmul_gflops(sizes, repeats: int) -> dict[int, float]:
  """{n: GFLOP/s of a jitted float32 n x n @ n x n jnp.dot}."""
  out = {}
  for n in sizes:
    a, b = (jax.random.normal(jax.random.PRNGKey(i), (n, n), jnp.float32) for i in (0, 1))
    mm = jax.jit(jnp.dot).lower(a, b).compile()
    out[n] = 2 * n ** 3 / _best_seconds(lambda: mm(a, b).block_until_ready(), repeats) / 1e9
    del a, b
  return out


def torch_matmul_gflops(sizes, repeats: int) -> tuple[dict[int, float], dict]:
  """({n: GFLOP/s of torch.mm}, facts about torch), or ({}, {}) without torch."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return {}, {}
  out = {}
  for n in sizes:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    out[n] = 2 * n ** 3 / _best_seconds(lambda: torch.mm(a, b), repeats) / 1e9
  return out, dict(torch=torch.__version__, torch_threads=torch.get_num_threads())


def stream_gbs(mib: int, repeats: int) -> dict[str, float]:
  """GB/s (1e9 bytes read + written per second) of y = x * a + b in place and of a copy, on a float32
  array of `mib` MiB (rows of 1024 elements)."""
  rows = max(1, mib * 2 ** 20 // 4 // 1024)
  nbytes = rows * 1024 * 4
  scale_add = jax.jit(lambda x: x * jnp.float32(1.0001) + jnp.float32(0.5), donate_argnums=0)
  # A full-size dynamic_update_slice of the donated y: x is read, y's buffer written (a copy).
  copy = jax.jit(lambda x, y: jax.lax.dynamic_update_slice(y, x, (0, 0)), donate_argnums=1)
  holder = {'x': jnp.zeros((rows, 1024), jnp.float32), 'y': jnp.ones((rows, 1024), jnp.float32)}

  def run_scale_add():
    holder['x'] = scale_add(holder['x'])
    holder['x'].block_until_ready()

  def run_copy():
    holder['y'] = copy(holder['x'], holder['y'])
    holder['y'].block_until_ready()

  out = {'scale_add': 2 * nbytes / _best_seconds(run_scale_add, repeats) / 1e9,
         'copy': 2 * nbytes / _best_seconds(run_copy, repeats) / 1e9}
  del holder
  return out


# ---------------------------------------------------------------- HLO text

@dataclasses.dataclass
class Instr:
  name: str
  opcode: str
  computation: str
  result_bytes: int
  operands: list[str]
  calls: list[str]
  op_name: str
  custom_target: str
  scalar: bool  # a rank-0 result (index arithmetic, reduction bodies)
  shape: str  # the result type without layouts, e.g. 'f32[16,56,56,384]'


def _type_bytes(type_str: str) -> int:
  total = 0
  for dtype, dims in re.findall(r'\b([a-z]+[0-9]*)\[([0-9,]*)\]', type_str):
    if dtype in DTYPE_BYTES:
      total += DTYPE_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(',') if d], dtype=np.int64))
  return total


def _split_args(rest: str) -> tuple[str, str]:
  """'a, b), attrs' -> ('a, b', 'attrs'): the operand list up to its closing parenthesis."""
  depth = 1
  for i, ch in enumerate(rest):
    depth += {'(': 1, ')': -1}.get(ch, 0)
    if depth == 0:
      return rest[:i], rest[i + 1:]
  return rest, ''


_INSTR = re.compile(r'^\s+(?:ROOT\s+)?%([^\s=]+)\s*=\s*(.*?)\s([a-z][a-z0-9\-]*)\((.*)$')
_COMPUTATION = re.compile(r'^(?:ENTRY\s+)?%([^\s(]+)\s.*\{\s*$')


def parse_hlo(text: str) -> tuple[str, dict[str, Instr], dict[str, list[str]]]:
  """(module name, {instruction name: Instr}, {computation: its instruction names}) of HLO text."""
  module = re.search(r'HloModule\s+([^\s,]+)', text)
  instrs, comps, comp = {}, collections.defaultdict(list), ''
  for line in text.splitlines():
    m = _COMPUTATION.match(line)
    if m and not line.startswith(' '):
      comp = m.group(1)
      continue
    m = _INSTR.match(line)
    if not m:
      continue
    name, type_str, opcode, rest = m.groups()
    args, attrs = _split_args(rest)
    calls = re.findall(r'(?:calls|to_apply|body|condition)=%([^\s,}]+)', attrs)
    for group in re.findall(r'(?:calls|branch_computations)=\{([^}]*)\}', attrs):
      calls += re.findall(r'%([^\s,}]+)', group)
    op_name = re.search(r'op_name="([^"]*)"', attrs)
    target = re.search(r'custom_call_target="([^"]*)"', attrs)
    instrs[name] = Instr(name=name, opcode=opcode, computation=comp, result_bytes=_type_bytes(type_str),
                         operands=re.findall(r'%([^\s,)]+)', args), calls=calls,
                         op_name=op_name.group(1) if op_name else '', custom_target=target.group(1) if target else '',
                         scalar=re.fullmatch(r'[a-z]+[0-9]*\[\]', type_str.strip()) is not None,
                         shape=re.sub(r'\{[^}]*\}', '', type_str).strip())
    comps[comp].append(name)
  return (module.group(1) if module else ''), instrs, dict(comps)


class HloIndex:
  """Classifies and sizes the instructions of a compiled module's HLO text."""

  def __init__(self, text: str):
    self.module, self.instrs, self.comps = parse_hlo(text)

  @functools.lru_cache(maxsize=None)
  def opcodes(self, comp: str) -> frozenset:
    """The opcodes in a computation and the computations it calls: of every array-valued instruction, and
    of the reductions, dots and convolutions (scalar index arithmetic and reduction bodies are left out)."""
    out = set()
    for name in self.comps.get(comp, ()):
      ins = self.instrs[name]
      if not ins.scalar or ins.opcode in ('reduce', 'reduce-window', 'dot', 'convolution'):
        out.add(ins.opcode)
      for c in ins.calls:
        out |= self.opcodes(c)
    return frozenset(out)

  def classify(self, name: str) -> str:
    ins = self.instrs.get(name)
    if ins is None:  # not in the text: by the name alone
      base = kind_of(name)
      return COMPUTE if base.startswith(('dot', 'convolution', 'conv_general', 'onednn', 'xnn')) else 'element-wise'
    ops = {ins.opcode}
    for c in ins.calls:
      ops |= self.opcodes(c)
    target = ins.custom_target.lower()
    # The native attention kernels are batched products with their softmax in between: matmul work.
    if ops & {'dot', 'convolution'} or any(k in target for k in ('matmul', 'conv', 'gemm', 'dot', 'attention')):
      return COMPUTE
    if ops & {'reduce', 'reduce-window', 'select-and-scatter'}:
      return 'reduction'
    if not ops - {'fusion'}:  # scalar work only (loop counters, index arithmetic)
      return 'element-wise'
    if ops - {'fusion'} <= DATA_MOVEMENT:
      return 'data movement'
    return 'element-wise'

  def bytes(self, name: str) -> int:
    """Result plus operand bytes of one execution (0 if unknown)."""
    ins = self.instrs.get(name)
    if ins is None:
      return 0
    return ins.result_bytes + sum(self.instrs[o].result_bytes for o in ins.operands if o in self.instrs)

  def shape(self, name: str) -> str:
    ins = self.instrs.get(name)
    return ins.shape if ins else ''

  def op_name(self, name: str) -> str:
    ins = self.instrs.get(name)
    return short_op_name(ins.op_name) if ins else '(not in the HLO text)'

  def is_container(self, name: str) -> bool:
    ins = self.instrs.get(name)
    return ins.opcode in CONTAINERS if ins else name.startswith(CONTAINERS)


def kind_of(name: str) -> str:
  """'multiply_add_fusion.37' -> 'multiply_add_fusion'."""
  return re.sub(r'\.\d+$', '', name)


def short_op_name(op_name: str) -> str:
  """The model op of an HLO op_name: fwd/bwd, the module path without jit/scan wrappers."""
  s = re.sub(r'^jit\([^)]*\)/', '', op_name)
  s = re.sub(r'^transpose\(jvp\(([^)]*)\)\)/', r'bwd \1/', s)
  s = re.sub(r'^jvp\(([^)]*)\)/', r'fwd \1/', s)
  if not op_name:
    return '(inserted by XLA)'
  if not s.startswith(('fwd ', 'bwd ')):
    s = 'step: ' + s  # outside the model: loss, optimizer, guards
  s = s.replace('/while/body/closed_call', '').replace('/while/body', '')
  return s if len(s) <= 90 else '...' + s[-87:]


# ---------------------------------------------------------------- 3. profile

def kernel_events(xplane_path: str, module: str) -> list[tuple[str, int]]:
  """[(HLO instruction name, duration ns)] of every kernel of `module` in a profile (see the docstring)."""
  from jax._src.lib import _profile_data  # pylint: disable=g-import-not-at-top
  out = []
  for plane in _profile_data.ProfileData.from_file(xplane_path).planes:
    for line in plane.lines:
      for event in line.events:
        name = event.name
        if name.startswith(('end: ', 'ThunkExecutor', 'ThreadpoolListener')):
          continue
        stats = dict(event.stats)
        if 'hlo_op' not in stats or (module and stats.get('hlo_module', module) != module):
          continue
        out.append((str(stats['hlo_op']), int(event.duration_ns)))
  return out


def profile_step(run_step, hlo: HloIndex, top: int) -> dict:
  """Runs one step under the profiler and breaks its kernel time down (see the docstring)."""
  with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter()
    with jax.profiler.trace(d):
      run_step()
    wall = time.perf_counter() - t
    paths = glob.glob(os.path.join(d, '**', '*.xplane.pb'), recursive=True)
    if not paths:
      raise RuntimeError(f'jax.profiler.trace wrote no .xplane.pb under {d}')
    events = kernel_events(paths[0], hlo.module)
  events = [(n, ns) for n, ns in events if not hlo.is_container(n)]
  total = sum(ns for _, ns in events) or 1
  by_class = collections.Counter()
  kinds = collections.defaultdict(lambda: {'ns': 0, 'count': 0, 'bytes': 0, 'by_name': collections.Counter()})
  for name, ns in events:
    cls = hlo.classify(name)
    by_class[cls] += ns
    k = kinds[(kind_of(name), cls)]
    k['ns'] += ns
    k['count'] += 1
    k['bytes'] += hlo.bytes(name)
    k['by_name'][name] += ns
  rows = []
  for (kind, cls), k in sorted(kinds.items(), key=lambda kv: -kv[1]['ns'])[:top]:
    costliest = k['by_name'].most_common(1)[0][0]
    rows.append(dict(kind=kind, cls=cls, count=k['count'], ms=k['ns'] / 1e6, share=k['ns'] / total,
                     gbs=k['bytes'] / k['ns'] if k['bytes'] else None, costliest=costliest,
                     costliest_ms=k['by_name'][costliest] / 1e6, shape=hlo.shape(costliest),
                     op=hlo.op_name(costliest)))
  shares = {c: by_class[c] / total for c in (COMPUTE,) + MEMORY_CLASSES}
  return dict(profile_wall_s=wall, kernel_thread_s=total / 1e9, num_kernel_events=len(events),
              class_shares=shares, memory_bound_share=sum(shares[c] for c in MEMORY_CLASSES), top_kinds=rows)


# ---------------------------------------------------------------- 2. the step

def bench_step(args) -> tuple[dict, callable, HloIndex]:
  """Cost analysis and timing of the trainer's train step; also (a function running one step, HLO index)."""
  ns = argparse.Namespace(model=args.model, image_size=args.image_size)
  su = model_speed.setup(ns, args.dtype, False, '', args.batch_size)
  out = dict(model=args.model, batch_per_device=args.batch_size, image_size=args.image_size, dtype=args.dtype,
             num_devices=su.mesh.size, global_batch=su.global_batch)

  exp_u = model_speed.unrolled_experiment(su)
  lowered_u = exp_u.train_step.lower(exp_u.abstract_state, su.batch)
  cost = lowered_u.cost_analysis()
  out.update(flops_lowered=float(cost['flops']), bytes_unfused=float(cost['bytes accessed']))
  if args.skip_fused_bytes:
    out.update(flops_per_step=out['flops_lowered'], bytes_per_step=out['bytes_unfused'],
               cost_source='lowered step, stages unrolled (bytes of unfused HLO ops: an over-count)')
  else:
    t = time.perf_counter()
    cost = lowered_u.compile().cost_analysis()  # per device after SPMD partitioning
    out['unrolled_compile_s'] = time.perf_counter() - t
    out.update(flops_per_step=float(cost['flops']) * su.mesh.size,
               bytes_per_step=float(cost['bytes accessed']) * su.mesh.size,
               cost_source='compiled step, stages unrolled (fused)')
  del exp_u, lowered_u
  jax.clear_caches()

  exp = su.exp
  t = time.perf_counter()
  compiled = exp.train_step.lower(exp.abstract_state, su.batch).compile()
  out['compile_s'] = time.perf_counter() - t
  holder = [exp.init_state()]

  def run_step():
    holder[0], metrics = compiled(holder[0], su.batch)
    jax.block_until_ready(metrics['train_loss'])

  for _ in range(args.warmup):
    run_step()
  times = []
  for _ in range(args.steps):
    t = time.perf_counter()
    run_step()
    times.append(time.perf_counter() - t)
  out.update(step_s=statistics.median(times), step_s_min=min(times), step_s_max=max(times),
             images_per_s=su.global_batch / statistics.median(times))
  return out, run_step, HloIndex(compiled.as_text())


def roofline(limits: dict, step: dict) -> dict:
  peak, bw = limits['peak_gflops'], limits['bandwidth_gbs']
  achieved = step['flops_per_step'] / step['step_s'] / 1e9
  intensity = step['flops_per_step'] / step['bytes_per_step']
  ceiling = min(peak, intensity * bw)
  return dict(achieved_gflops=achieved, achieved_gbs=step['bytes_per_step'] / step['step_s'] / 1e9,
              intensity_flops_per_byte=intensity, ridge_flops_per_byte=peak / bw, ceiling_gflops=ceiling,
              bound='memory' if intensity * bw < peak else 'compute', fraction_of_peak=achieved / peak,
              fraction_of_ceiling=achieved / ceiling)


# ---------------------------------------------------------------- output

def _cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def report(r: dict) -> str:
  sizes = lambda d: ', '.join(f'{n}: {v:.1f}' for n, v in d.items())
  lines = [f'machine: {r["cpu"]}, {r["cpu_count"]} logical CPUs; jax {r["jax"]} {r["backend"]} '
           f'({r["num_devices"]} device(s): {r["device"]})',
           f'peak f32 matmul, JAX jnp.dot   (n: GFLOP/s): {sizes(r["matmul_gflops_jax"])} -> peak '
           f'{r["peak_gflops"]:.1f} GFLOP/s']
  if r.get('matmul_gflops_torch'):
    lines.append(f'peak f32 matmul, torch.mm ({r["torch_threads"]} thr) (n: GFLOP/s): '
                 f'{sizes(r["matmul_gflops_torch"])} -> {r["peak_gflops_torch"]:.1f} GFLOP/s (reference)')
  lines.append(f'memory bandwidth, {r["stream_mib"]} MiB f32: y = x*a+b {r["stream_scale_add_gbs"]:.1f} GB/s, '
               f'copy {r["stream_copy_gbs"]:.1f} GB/s -> {r["bandwidth_gbs"]:.1f} GB/s; ridge point '
               f'{r["ridge_flops_per_byte"]:.1f} flop/byte')
  lines += [
      '',
      f'train step: {r["model"]} {r["image_size"]}px, batch {r["batch_per_device"]}/device x {r["num_devices"]}, '
      f'{r["dtype"]} (the trainer\'s step; compile {r["compile_s"]:.1f} s)',
      '| figure | value |', '|---|---:|',
      f'| step time (median of {r["steps"]}; min-max) | {r["step_s"]:.3f} s ({r["step_s_min"]:.3f}-'
      f'{r["step_s_max"]:.3f}) |',
      f'| images/s | {r["images_per_s"]:.2f} |',
      f'| GFLOP per step | {r["flops_per_step"] / 1e9:.1f} |',
      f'| GB accessed per step | {r["bytes_per_step"] / 1e9:.1f} |',
      f'| (lowered, unfused: GFLOP / GB) | {r["flops_lowered"] / 1e9:.1f} / {r["bytes_unfused"] / 1e9:.1f} |',
      f'| arithmetic intensity | {r["intensity_flops_per_byte"]:.2f} flop/byte |',
      f'| achieved | {r["achieved_gflops"]:.1f} GFLOP/s, {r["achieved_gbs"]:.1f} GB/s |',
      f'| roofline ceiling min(peak, intensity x bandwidth) | {r["ceiling_gflops"]:.1f} GFLOP/s ({r["bound"]}-bound) |',
      f'| fraction of peak / of ceiling | {r["fraction_of_peak"]:.1%} / {r["fraction_of_ceiling"]:.1%} |',
      f'cost: {r["cost_source"]}']
  if 'class_shares' in r:
    lines += ['', f'profile of one step: {r["kernel_thread_s"]:.2f} s of kernel time on all threads '
              f'({r["num_kernel_events"]} kernel executions) in {r["profile_wall_s"]:.2f} s wall',
              '| class | share of kernel time | s |', '|---|---:|---:|']
    for cls, share in r['class_shares'].items():
      label = cls if cls == COMPUTE else f'memory-bound: {cls}'
      lines.append(f'| {label} | {share:.1%} | {share * r["kernel_thread_s"]:.2f} |')
    lines.append(f'| memory-bound, all | {r["memory_bound_share"]:.1%} | '
                 f'{r["memory_bound_share"] * r["kernel_thread_s"]:.2f} |')
    lines += ['', f'top {len(r["top_kinds"])} fusion kinds (GB/s: operand + result bytes per execution / time)',
              '| kind | class | n | ms | share | GB/s | costliest instance, its shape (ms): model op |',
              '|---|---|---:|---:|---:|---:|---|']
    for k in r['top_kinds']:
      gbs = f'{k["gbs"]:.1f}' if k['gbs'] is not None else ''
      lines.append(f'| {k["kind"]} | {k["cls"]} | {k["count"]} | {k["ms"]:.1f} | {k["share"]:.1%} | {gbs} | '
                   f'{k["costliest"]} {k["shape"]} ({k["costliest_ms"]:.1f} ms): {k["op"]} |')
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--model', default='hatnet_tiny', choices=models.names())
  parser.add_argument('--batch_size', type=int, default=16, help='per device')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--dtype', default='float32')
  parser.add_argument('--steps', type=int, default=3, help='timed train steps (median)')
  parser.add_argument('--warmup', type=int, default=1, help='untimed train steps after compilation')
  parser.add_argument('--matmul_sizes', default='2048,4096', help='square matmul sizes for the peak')
  parser.add_argument('--stream_mib', type=int, default=1024, help='MiB of the streamed f32 array')
  parser.add_argument('--repeats', type=int, default=3, help='timed calls of each micro-benchmark (best)')
  parser.add_argument('--skip_fused_bytes', action='store_true',
                      help='cost analysis of the lowered (unfused) unrolled step: no extra compilation')
  parser.add_argument('--skip_profile', action='store_true', help='no profile / op breakdown')
  parser.add_argument('--top', type=int, default=12, help='fusion kinds listed')
  parser.add_argument('--json_out', default='', help='append the JSON line to this file')
  model_speed.add_host_memory_flag(parser)
  args = parser.parse_args(argv)
  model_speed.apply_host_memory_flag(args, from_command_line=argv is None)

  sizes = [int(n) for n in args.matmul_sizes.split(',')]
  r = dict(cpu=_cpu_name(), cpu_count=os.cpu_count(), jax=jax.__version__, backend=jax.default_backend(),
           device=jax.devices()[0].device_kind)
  r['matmul_gflops_jax'] = jax_matmul_gflops(sizes, args.repeats)
  r['peak_gflops'] = max(r['matmul_gflops_jax'].values())
  torch_gflops, torch_facts = torch_matmul_gflops(sizes, args.repeats)
  if torch_gflops:
    r.update(torch_facts, matmul_gflops_torch=torch_gflops, peak_gflops_torch=max(torch_gflops.values()))
  stream = stream_gbs(args.stream_mib, args.repeats)
  r.update(stream_mib=args.stream_mib, stream_scale_add_gbs=stream['scale_add'], stream_copy_gbs=stream['copy'],
           bandwidth_gbs=max(stream.values()))
  print(f'limits: peak {r["peak_gflops"]:.1f} GFLOP/s (JAX f32 matmul), bandwidth {r["bandwidth_gbs"]:.1f} GB/s',
        flush=True)
  jax.clear_caches()

  step, run_step, hlo = bench_step(args)
  r.update(step, steps=args.steps)
  r.update(roofline(r, step))
  if not args.skip_profile:
    r.update(profile_step(run_step, hlo, args.top))
  r['command'] = ' '.join(['python', 'benchmarks/roofline.py'] + (argv if argv is not None else sys.argv[1:]))
  print()
  print(report(r))
  line = json.dumps(r)
  print(line, flush=True)
  if args.json_out:
    with open(args.json_out, 'a') as f:
      f.write(line + '\n')
  return r


if __name__ == '__main__':
  main()
