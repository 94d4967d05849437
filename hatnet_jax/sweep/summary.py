"""DIR/summary.csv and DIR/summary.md: one row per point, read from the points' run records only
(run.json: status, steps, best and final eval metrics, wall time, error; plus the sweep's own
sweep_status.json for failures the trainer could not record, e.g. a bad setting or a killed process).

The ranking metric is run.json's best.metric ('eval_top1' for classification), higher or lower is better
as the record says."""
import csv
import io
import math
import os
import re
from typing import Any, Mapping, Sequence

from hatnet_jax.sweep import state
from hatnet_jax.sweep.points import Point, display_value

COLUMNS = ('point', 'settings', 'status', 'steps', 'total_steps', 'metric', 'best', 'best_step', 'final',
           'final_eval_loss', 'wall_time_s', 'error')
STATUS_ORDER = ('finished', 'finished-earlier', 'running', 'submitted', 'incomplete', 'failed', 'not-run')
FINISHED = ('finished', 'finished-earlier')


def _float(x) -> float | None:
  try:
    return None if x is None else float(x)
  except (TypeError, ValueError):
    return None


def point_status(point: Point) -> str:
  """A point's status from its files (no runner involved: --summary_only, --no_wait)."""
  rec = state.record(point) or {}
  sweep_status = state.read_status(point.workdir).get('status')
  if state.run_record.is_finished(rec):
    return 'finished'
  if rec.get('status') == 'failed' or sweep_status == 'failed':
    return 'failed'
  if rec.get('status') in ('preempted', 'interrupted'):
    return 'incomplete'
  if rec.get('status') == 'running':
    return 'running'
  if sweep_status == 'submitted':
    return 'submitted'
  return 'incomplete' if os.path.isdir(point.workdir) else 'not-run'


def summarize_point(point: Point, status: str | None = None) -> dict[str, Any]:
  """One row of the summary, from the point's run.json (and the sweep's status record for its error)."""
  rec = state.record(point) or {}
  status = status or point_status(point)
  best = rec.get('best') or {}
  metric = best.get('metric')
  final_metrics = rec.get('final_metrics') or {}
  error = ''
  if status in ('failed', 'incomplete'):
    error = state.read_status(point.workdir).get('error') or rec.get('error') or ''
  return dict(
      point=point.name,
      settings=' '.join(f'{k}={display_value(v)}' for k, v in point.settings.items()),
      status=status,
      steps=rec.get('step', ''),
      total_steps=rec.get('num_steps', ''),
      metric=metric or '',
      best=_float(best.get('value')),
      best_step=best.get('step', ''),
      final=_float(final_metrics.get(metric)) if metric else None,
      final_eval_loss=_float(final_metrics.get('eval_loss')),
      wall_time_s=_float(rec.get('wall_time_s')),
      error=error,
      higher_is_better=best.get('higher_is_better', True))


def _sort_key(row):  # best first; rows without a best last, failed ones after unfinished ones
  best = row['best']
  missing = best is None or math.isnan(best)
  sign = -1.0 if row['higher_is_better'] else 1.0
  return (missing, 0.0 if missing else sign * best, STATUS_ORDER.index(row['status']), row['point'])


def _percent(metric: str) -> bool:
  return bool(re.search(r'top\d|acc|iou', metric, re.I))


def _fmt_metric(value, metric):
  if value is None:
    return ''
  return f'{100 * value:.2f}' if _percent(metric) else f'{value:.4g}'


def exit_status(rows: Sequence[Mapping[str, Any]]) -> int:
  return 0 if all(r['status'] in FINISHED for r in rows) else 1


def write_sweep_file(points: Sequence[Point], workdir: str, sweep_info: Mapping[str, Any] | None):
  os.makedirs(workdir, exist_ok=True)
  state.write_json(os.path.join(workdir, state.SWEEP_FILE), dict(
      sweep_info or {}, points=[dict(name=p.name, overrides=p.overrides, settings=p.settings, command=p.command)
                                for p in points]))


def write_summary(points: Sequence[Point], workdir: str, statuses: Mapping[str, str] | None = None, *,
                  sweep_info: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
  """DIR/summary.csv and DIR/summary.md: one row per point, best eval metric first. Returns the rows."""
  os.makedirs(workdir, exist_ok=True)
  rows = sorted((summarize_point(p, (statuses or {}).get(p.name)) for p in points), key=_sort_key)
  with open(os.path.join(workdir, 'summary.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction='ignore')
    writer.writeheader()
    for row in rows:
      writer.writerow({k: '' if row[k] is None else row[k] for k in COLUMNS})
  keys = list(dict.fromkeys(k for p in points for k in p.settings))
  by_name = {p.name: p for p in points}
  metrics = list(dict.fromkeys(r['metric'] for r in rows if r['metric']))
  metric = metrics[0] if len(metrics) == 1 else 'metric'
  unit = ' (%)' if len(metrics) == 1 and _percent(metric) else ''
  out = io.StringIO()
  done = sum(r['status'] in FINISHED for r in rows)
  out.write(f'{done} of {len(rows)} points finished; sorted by best {metric}. '
            f'TensorBoard: tensorboard --logdir={workdir}\n\n')
  base = (sweep_info or {}).get('base_overrides') or {}
  if base:
    out.write('Sweep-wide overrides: ' + ' '.join(f'`--config.{k}={display_value(v)}`' for k, v in base.items())
              + ' (a point\'s own value of the same key wins; the columns show what applied).\n\n')
  header = ['#', 'point', *keys, 'status', 'steps', f'best {metric}{unit}', 'best step', f'final {metric}{unit}',
            'final eval loss', 'wall time', 'error']
  out.write('| ' + ' | '.join(header) + ' |\n|' + '---|' * len(header) + '\n')
  for i, row in enumerate(rows, 1):
    settings = by_name[row['point']].settings
    steps = f'{row["steps"]}/{row["total_steps"]}' if row['total_steps'] != '' else str(row['steps'])
    wall = '' if row['wall_time_s'] is None else f'{row["wall_time_s"]:.0f} s'
    cells = [str(i), f'`{row["point"]}`', *(display_value(settings[k]) if k in settings else '' for k in keys),
             row['status'], steps, _fmt_metric(row['best'], row['metric']), str(row['best_step']),
             _fmt_metric(row['final'], row['metric']),
             '' if row['final_eval_loss'] is None else f'{row["final_eval_loss"]:.4f}', wall, row['error'][:300]]
    out.write('| ' + ' | '.join(c.replace('|', '\\|').replace('\n', ' ') for c in cells) + ' |\n')
  with open(os.path.join(workdir, 'summary.md'), 'w') as f:
    f.write(out.getvalue())
  return rows
