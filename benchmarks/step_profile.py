"""One step under jax.profiler.trace, its kernel time broken down by class and by fusion kind (roofline.py,
part 3 of its docstring)."""
import collections
import glob
import os
import tempfile
import time

import jax

from hlo_index import COMPUTE, MEMORY_CLASSES, HloIndex, kind_of


def kernel_events(xplane_path: str, module: str) -> list[tuple[str, int]]:
  """[(HLO instruction name, duration ns)] of every kernel of `module` in a profile (see roofline.py's docstring)."""
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
  """Runs one step under the profiler and breaks its kernel time down (see roofline.py's docstring)."""
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
