"""The compiled HLO text of a step, parsed: each instruction's class (matmul/conv, or memory-bound:
element-wise, reduction, data movement), its bytes per execution, its shape and the model op it comes from.
Used by roofline.py to classify the kernels of a profiled step (see its docstring, part 3).
"""
import collections
import dataclasses
import functools
import re

import numpy as np

COMPUTE = 'matmul/conv'
MEMORY_CLASSES = ('element-wise', 'reduction', 'data movement')  # the memory-bound classes
CONTAINERS = ('while', 'call', 'conditional')
DATA_MOVEMENT = frozenset({
    'bitcast', 'broadcast', 'concatenate', 'copy', 'dynamic-slice', 'dynamic-update-slice', 'gather', 'iota',
    'pad', 'parameter', 'reshape', 'reverse', 'scatter', 'slice', 'transpose', 'constant', 'tuple',
    'get-tuple-element', 'bitcast-convert'})
DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4, 'u32': 4,
               'f32': 4, 's64': 8, 'u64': 8, 'f64': 8, 'c64': 8, 'c128': 16}


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
