"""Hyperparameter sweeps: one `python main.py` run per point of a sweep file, then a table of the results.

A sweep file (configs/sweeps/*.py) defines `get_sweep()`, which returns the points: a list of override dicts
keyed by config paths, as on the command line (`'data.image_size'` is `--config.data.image_size`). Build it
with `sweep`, `product`, `zipit` and `chainit`, or write the list by hand:

    from hatnet_jax.sweep import product, sweep

    def get_sweep():
      return product(sweep('base_lr', [1e-3, 2e-3]), sweep('drop_path_rate', [0.0, 0.1]))

Run it over a base config (extra `--config.k=v` flags apply to every point, e.g. a shorter budget):

    python -m hatnet_jax.sweep --config=configs/digits.py --sweep=configs/sweeps/digits_lr.py --workdir=DIR
    python -m hatnet_jax.sweep ... --dry_run      # only print each point's `python main.py ...` command
    python -m hatnet_jax.sweep ... --summary_only # only rebuild DIR/summary.{csv,md} from what the runs wrote

Each point trains in DIR/<name> (name = its overrides, e.g. `base_lr=0.001,drop_path_rate=0.1`), one after
another, each in its own `python main.py` process (a crash frees everything and cannot stop the others);
its output goes to DIR/<name>/sweep.log. Every point's overrides are validated against the base config
before anything runs. A point is *finished* when its latest checkpoint (DIR/<name>/checkpoints/<step>) is
at the run's last step (config.num_steps, or num_epochs x the steps per epoch that the run's TensorBoard
'epoch' scalar implies); finished points are skipped, other points run again and the trainer resumes them
from their latest checkpoint. At the end DIR/summary.csv and DIR/summary.md list every point (final and
best eval top-1, final eval loss, steps, wall time, status and error), best top-1 first, read back from
the points' TensorBoard event files. The exit status is 1 if any point failed or did not finish.

SIGINT/SIGTERM: the running point gets SIGTERM (the trainer saves a checkpoint and stops), the summary is
written, the sweep exits; relaunching the same command continues where it stopped.
"""
import builtins
import csv
import dataclasses
import difflib
import glob
import hashlib
import importlib.util
import io
import json
import math
import os
import re
import shlex
import signal
import struct
import subprocess
import sys
import time
from typing import Any, Iterable, Mapping, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(REPO_ROOT, 'main.py')
LOG_FILE = 'sweep.log'  # in DIR/<point>: the output of every attempt of the point, appended
STATUS_FILE = 'sweep_status.json'  # in DIR/<point>: overrides, command, attempts, status, error
SWEEP_FILE = 'sweep.json'  # in DIR: base config, shared overrides, the points
EVAL_TOP1, EVAL_LOSS, EPOCH = 'eval_top1', 'eval_loss', 'epoch'  # scalar tags written by hatnet_jax.train
ERROR_TAIL_LINES = 30
MAX_NAME_LEN = 120


class SweepError(ValueError):
  """A sweep file or an override that cannot work; raised before any point runs."""


# ---------------------------------------------------------------------------------------------------------
# The API of sweep files: a sweep is a list of points, a point a dict {config path: value}.


def _key(key: str) -> str:
  key = key[len('config.'):] if key.startswith('config.') else key
  if not re.fullmatch(r'[A-Za-z_]\w*(\.[A-Za-z_]\w*)*', key):
    raise SweepError(f'{key!r} is not a config path like "base_lr" or "data.image_size"')
  return key


def sweep(key: str, values: Iterable[Any]) -> list[dict[str, Any]]:
  """One point per value of the config field `key` ('base_lr', 'data.image_size'; a 'config.' prefix is ok)."""
  key = _key(key)
  values = list(values)
  if not values:
    raise SweepError(f'sweep({key!r}, ...) has no values')
  return [{key: v} for v in values]


def fixed(key: str, value: Any) -> list[dict[str, Any]]:
  """A single point `{key: value}`: in a `product`, sets `key` in every point."""
  return sweep(key, [value])


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
  both = set(a) & set(b)
  if both:
    raise SweepError(f'the config path(s) {sorted(both)} are swept twice in one point')
  return {**a, **b}


def product(*sweeps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Every combination: product(sweep('a', [1, 2]), sweep('b', [3, 4])) has 4 points (the last varies fastest)."""
  points = [{}]
  for s in sweeps:
    points = [_merge(p, q) for p in points for q in s]
  return points


def zipit(*sweeps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Points taken side by side: zipit(sweep('a', [1, 2]), sweep('b', [3, 4])) = [{a:1, b:3}, {a:2, b:4}]."""
  lengths = [len(s) for s in sweeps]
  if len(set(lengths)) > 1:
    raise SweepError(f'zipit: the sweeps have different lengths {lengths}')
  points = []
  for group in builtins.zip(*sweeps):
    point = {}
    for q in group:
      point = _merge(point, q)
    points.append(point)
  return points


def chainit(*sweeps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """The points of each sweep, one sweep after the other."""
  return [dict(p) for s in sweeps for p in s]


# ---------------------------------------------------------------------------------------------------------
# Points: names and commands.


def _name_value(value: Any) -> str:
  if isinstance(value, (list, tuple)):
    return '-'.join(_name_value(v) for v in value)
  if isinstance(value, float):
    return repr(value)
  return str(value)


def point_name(overrides: Mapping[str, Any]) -> str:
  """The directory name of a point: 'key=value' pairs sorted by key, joined by ',' ('base' if none).

  Stable (same overrides, same name, whatever the order they were given in) and filesystem safe: other
  characters than letters, digits and `._=,+-` become '_'; names over MAX_NAME_LEN characters are cut and
  end with '~' and a hash of the overrides (so does a name that only such replacements made equal to an
  earlier point's, see `make_points`).
  """
  if not overrides:
    return 'base'
  text = ','.join(f'{k}={_name_value(overrides[k])}' for k in sorted(overrides))
  name = re.sub(r'[^A-Za-z0-9._=,+-]', '_', text)
  if name.startswith(('.', '-')):
    name = '_' + name
  if len(name) > MAX_NAME_LEN:
    digest = hashlib.sha1(repr(sorted(overrides.items())).encode()).hexdigest()[:10]
    name = f'{name[:MAX_NAME_LEN - 11]}~{digest}'
  return name


def cli_value(value: Any) -> str:
  """`value` as ml_collections' config flags parse it back (`--config.key=<this>`)."""
  if value is None:
    raise SweepError('None cannot be set from the command line (config flags parse it as the string "None")')
  if isinstance(value, str):
    return value
  if isinstance(value, (bool, int, float)):
    return repr(value)
  if isinstance(value, (list, tuple)):
    return repr(tuple(value))
  if isinstance(value, Mapping):
    return repr(dict(value))
  raise SweepError(f'cannot pass a {type(value).__name__} ({value!r}) on the command line')


@dataclasses.dataclass(frozen=True)
class Point:
  name: str
  overrides: dict[str, Any]  # the point's own overrides (what names it)
  argv: tuple[str, ...]  # the main.py command, sys.executable first
  workdir: str
  num_steps: int | None  # config.num_steps of the resolved config (None: given in epochs)
  num_epochs: int | None

  @property
  def command(self) -> str:
    """The command as printed (`python main.py ...`), for a shell or a cluster scheduler."""
    main = os.path.relpath(self.argv[1])
    return shlex.join(['python', self.argv[1] if main.startswith('..') else main, *self.argv[2:]])


def _flat_keys(config, prefix: str = '') -> list[str]:
  keys = []
  for k, v in config.items():
    keys.append(prefix + k)
    if hasattr(v, 'items'):
      keys.extend(_flat_keys(v, prefix + k + '.'))
  return keys


def _has_path(config, key: str) -> bool:
  node = config
  for part in key.split('.'):
    if not hasattr(node, 'keys') or part not in node.keys():
      return False
    node = node[part]
  return True


def parse_config(config_arg: str, flag_args: Sequence[str]):
  """The ConfigDict that `main.py --config=<config_arg> <flag_args>` trains with (ml_collections config
  flags: same file loading, same override parsing, locked config)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  if REPO_ROOT not in sys.path:  # config files import `configs.default`
    sys.path.insert(0, REPO_ROOT)
  argv = ['main.py', f'--config={config_arg}', *flag_args]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config file', flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def make_points(config_arg: str, workdir: str, overrides: Sequence[Mapping[str, Any]],
                base_overrides: Mapping[str, Any] | None = None, main: str = MAIN) -> list[Point]:
  """The points of a sweep, each checked against the base config as main.py would parse it.

  `base_overrides` apply to every point (a point's own value of the same key wins). Raises SweepError,
  naming the point, for a config path the base config lacks, a value its field cannot take, or two points
  with the same overrides.
  """
  base_overrides = {_key(k): v for k, v in (base_overrides or {}).items()}
  try:
    base = parse_config(config_arg, [f'--config.{k}={cli_value(v)}' for k, v in base_overrides.items()])
  except SweepError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise SweepError(f'cannot load the base config {config_arg!r}: {type(e).__name__}: {e}') from e
  known = _flat_keys(base)
  points, names = [], {}
  for i, raw in enumerate(overrides):
    if not isinstance(raw, Mapping):
      raise SweepError(f'point {i} is a {type(raw).__name__}, not a dict of overrides: {raw!r}')
    point = {_key(k): v for k, v in raw.items()}
    for key in point:
      if not _has_path(base, key):
        close = difflib.get_close_matches(key, known, n=3)
        hint = f'; did you mean {" or ".join(close)}?' if close else ''
        raise SweepError(f'point {i} {point}: the config {config_arg} has no field {key!r}{hint}')
    args = [f'--config.{k}={cli_value(v)}' for k, v in base_overrides.items() if k not in point]
    args += [f'--config.{k}={cli_value(v)}' for k, v in point.items()]
    try:
      config = parse_config(config_arg, args)
    except Exception as e:  # pylint: disable=broad-except
      raise SweepError(f'point {i} {point}: {type(e).__name__}: {e}') from e
    name = point_name(point)
    if name in names:
      if points[names[name]].overrides == point:
        raise SweepError(f'points {names[name]} and {i} are the same: {point}')
      name = f'{name}~{hashlib.sha1(repr(sorted(point.items())).encode()).hexdigest()[:10]}'
    names[name] = len(points)
    point_dir = os.path.join(workdir, name)
    argv = (sys.executable, main, f'--config={config_arg}', f'--workdir={point_dir}', *args)
    points.append(Point(name=name, overrides=point, argv=argv, workdir=point_dir, num_steps=config.get('num_steps'),
                        num_epochs=config.get('num_epochs')))
  if not points:
    raise SweepError('the sweep has no points')
  return points


def load_sweep(path: str) -> list[dict[str, Any]]:
  """The override dicts that `get_sweep()` of the Python file at `path` returns."""
  if not os.path.isfile(path):
    raise SweepError(f'sweep file {path!r} does not exist')
  if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
  name = 'sweep_file_' + re.sub(r'\W', '_', os.path.splitext(os.path.basename(path))[0])
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not callable(getattr(module, 'get_sweep', None)):
    raise SweepError(f'{path} defines no get_sweep() function')
  points = module.get_sweep()
  if isinstance(points, Mapping) or not isinstance(points, Iterable):
    raise SweepError(f'{path}: get_sweep() must return a list of override dicts, got {type(points).__name__}')
  return list(points)


# ---------------------------------------------------------------------------------------------------------
# What a run wrote: checkpoints and TensorBoard events.


def checkpoint_steps(point_dir: str) -> list[int]:
  """The committed checkpoint steps in DIR/<point>/checkpoints (orbax renames a step's temporary
  directory to the bare step number once the save is complete)."""
  ckpt_dir = os.path.join(point_dir, 'checkpoints')
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())


@dataclasses.dataclass
class Events:
  scalars: dict[str, dict[int, float]]  # tag -> step -> value (a later write of a step wins)
  hparams: dict[str, Any]  # the TensorBoard HParams plugin's session_start_info
  wall_time: float  # sum over event files of last - first event time (training time, without gaps)


def _records(path: str) -> Iterable[bytes]:
  """The records of a TFRecord file (an event file); stops at a record cut short (a run killed mid-write)."""
  with open(path, 'rb') as f:
    while True:
      header = f.read(12)  # uint64 length, uint32 masked CRC of the length
      if len(header) < 12:
        return
      (length,) = struct.unpack('<Q', header[:8])
      data = f.read(length)
      if len(data) < length or len(f.read(4)) < 4:  # the data, then its CRC
        return
      yield data


def read_events(point_dir: str) -> Events:
  """Scalars and hparams from the event files directly in `point_dir` (one per attempt of a resumed run).

  Reads the files itself (TFRecord framing + TensorBoard's Event protos) rather than with TensorBoard's
  EventAccumulator, which imports all of TensorFlow here; local paths only.
  """
  from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
  from tensorboard.plugins.hparams import plugin_data_pb2  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  scalars, hparams, wall = {}, {}, 0.0
  for path in sorted(glob.glob(os.path.join(glob.escape(point_dir), 'events.out.tfevents.*'))):
    times = []
    for record in _records(path):
      event = event_pb2.Event.FromString(record)
      if not event.HasField('summary'):
        continue
      times.append(event.wall_time)
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == 'hparams':
          data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
          if data.HasField('session_start_info'):
            for key, v in data.session_start_info.hparams.items():
              kind = v.WhichOneof('kind')
              hparams[key] = getattr(v, kind) if kind else None
        elif value.HasField('simple_value'):
          scalars.setdefault(value.tag, {})[event.step] = float(value.simple_value)
        elif value.HasField('tensor') and not value.tensor.tensor_shape.dim:
          array = tensor_util.make_ndarray(value.tensor)
          if array.dtype.kind in 'fiub':
            scalars.setdefault(value.tag, {})[event.step] = float(array)
    if times:
      wall += max(times) - min(times)
  return Events(scalars=scalars, hparams=hparams, wall_time=wall)


def total_steps(point: Point, events: Events | None = None) -> int | None:
  """The last step of the point's run: config.num_steps, else num_epochs x the steps per epoch that the
  trainer's 'epoch' scalar (step / steps per epoch) implies; None while neither is known."""
  if point.num_steps is not None:
    return point.num_steps
  events = read_events(point.workdir) if events is None else events
  for step, epoch in sorted(events.scalars.get(EPOCH, {}).items()):
    if epoch > 0 and point.num_epochs is not None:
      return int(point.num_epochs) * max(1, round(step / epoch))
  return None


def is_finished(point: Point) -> bool:
  steps = checkpoint_steps(point.workdir)
  if not steps:
    return False
  total = total_steps(point)
  return total is not None and steps[-1] >= total


# ---------------------------------------------------------------------------------------------------------
# Running.


def _read_status(point_dir: str) -> dict[str, Any]:
  try:
    with open(os.path.join(point_dir, STATUS_FILE)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def _write_json(path: str, data: Any):
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(data, f, indent=1, default=str)
  os.replace(tmp, path)


def error_of(log_tail: str) -> str:
  """The error a failed run printed: its last exception line (+ the message lines under it), else the
  last lines of its output."""
  lines = [l.rstrip() for l in log_tail.splitlines() if l.strip()]
  for i in range(len(lines) - 1, -1, -1):
    if re.match(r'^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b(:|$)', lines[i]):
      return ' | '.join(lines[i:i + 6])
  return ' | '.join(lines[-5:])


def _set_parent_death_signal():  # in the child, before exec: SIGTERM when the sweep dies (Linux)
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
  except Exception:  # pylint: disable=broad-except
    pass


class _Stop:
  """SIGINT/SIGTERM while a point runs: the point gets SIGTERM (checkpoint and exit), the sweep stops after
  it; a second signal kills the point."""

  def __init__(self):
    self.signum, self.proc, self._previous = None, None, {}

  def __enter__(self):
    for s in (signal.SIGINT, signal.SIGTERM):
      self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)

  def _handle(self, signum, frame):
    del frame
    first = self.signum is None
    self.signum = signum
    if self.proc is not None and self.proc.poll() is None:
      self.proc.send_signal(signal.SIGTERM if first else signal.SIGKILL)
    print(f'sweep: got signal {signum}: ' + ('stopping after the running point checkpoints' if first else
                                               'killing the running point'), file=sys.stderr, flush=True)


def run_point(point: Point, stop: _Stop, env: Mapping[str, str] | None = None) -> dict[str, Any]:
  """Runs (or resumes) one point in a subprocess; returns its updated status record."""
  os.makedirs(point.workdir, exist_ok=True)
  record = _read_status(point.workdir)
  record.update(name=point.name, overrides=point.overrides, command=point.command)
  attempts = record.setdefault('attempts', [])
  log_path = os.path.join(point.workdir, LOG_FILE)
  with open(log_path, 'ab') as log:
    start_offset = log.tell()
    log.write(f'==== sweep: {time.strftime("%Y-%m-%d %H:%M:%S")}: {shlex.join(point.argv)}\n'.encode())
    log.flush()
    start = time.time()
    proc = subprocess.Popen(point.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            env=None if env is None else dict(env), start_new_session=True,
                            preexec_fn=_set_parent_death_signal)
    stop.proc = proc
    if stop.signum is not None:  # a signal came while it was starting
      proc.send_signal(signal.SIGTERM)
    try:
      returncode = proc.wait()
    finally:
      stop.proc = None
  wall = time.time() - start
  with open(log_path, 'rb') as log:
    log.seek(max(start_offset, os.path.getsize(log_path) - 2**16))
    tail = b''.join(log.readlines()[-ERROR_TAIL_LINES:]).decode('utf-8', 'replace')
  attempts.append(dict(start=time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(start)), wall_time_s=wall,
                       returncode=returncode))
  if returncode == 0 and is_finished(point):
    record.update(status='finished', error='')
  elif returncode == 0:  # the trainer saved and stopped early: SIGTERM (from the sweep or a preemption)
    why = 'the sweep was stopped' if stop.signum is not None else 'preempted'
    record.update(status='incomplete', error=f'{why} at step {max(checkpoint_steps(point.workdir), default=0)}; '
                  'relaunch the sweep to resume')
  else:
    why = f'killed by signal {-returncode}' if returncode < 0 else f'exit status {returncode}'
    record.update(status='failed', error=f'{why}: {error_of(tail)}', log_tail=tail)
  if record['status'] != 'failed':
    record.pop('log_tail', None)
  _write_json(os.path.join(point.workdir, STATUS_FILE), record)
  return record


def run_sweep(points: Sequence[Point], workdir: str, *, env: Mapping[str, str] | None = None,
              sweep_info: Mapping[str, Any] | None = None, log=print) -> tuple[list[dict[str, Any]], int]:
  """Runs the points that are not finished, one after another; writes DIR/summary.{csv,md}.

  Returns (the summary rows, exit status: 0 if every point finished, 1 if one failed or did not finish,
  128 + signal if the sweep was stopped by SIGINT/SIGTERM).
  """
  os.makedirs(workdir, exist_ok=True)
  _write_json(os.path.join(workdir, SWEEP_FILE), dict(
      sweep_info or {}, points=[dict(name=p.name, overrides=p.overrides, command=p.command) for p in points]))
  statuses = {}
  with _Stop() as stop:
    for i, point in enumerate(points, 1):
      prefix = f'[{i}/{len(points)}] {point.name}'
      if stop.signum is not None:
        statuses[point.name] = 'not-run'
        continue
      if is_finished(point):
        statuses[point.name] = 'finished-earlier'
        log(f'{prefix}: finished earlier, skipped')
        continue
      resume = checkpoint_steps(point.workdir)
      log(f'{prefix}: ' + (f'resuming from step {resume[-1]}' if resume else 'running') +
          f' (log: {os.path.join(point.workdir, LOG_FILE)})')
      record = run_point(point, stop, env)
      statuses[point.name] = record['status']
      wall = record['attempts'][-1]['wall_time_s']
      log(f'{prefix}: {record["status"]} after {wall:.0f}s' + (f': {record["error"]}' if record['error'] else ''))
  rows = write_summary(points, workdir, statuses)
  if stop.signum is not None:
    return rows, 128 + stop.signum
  return rows, 0 if all(r['status'] in ('finished', 'finished-earlier') for r in rows) else 1


# ---------------------------------------------------------------------------------------------------------
# Summary.

COLUMNS = ('point', 'overrides', 'status', 'steps', 'total_steps', 'final_top1', 'best_top1', 'best_step',
           'final_eval_loss', 'wall_time_s', 'error')


def summarize_point(point: Point, status: str | None = None) -> dict[str, Any]:
  """One row of the summary, from the point's event files, checkpoints and status record."""
  events = read_events(point.workdir) if os.path.isdir(point.workdir) else Events({}, {}, 0.0)
  record = _read_status(point.workdir)
  top1 = events.scalars.get(EVAL_TOP1, {})
  loss = events.scalars.get(EVAL_LOSS, {})
  steps = max([s for tag in events.scalars.values() for s in tag] + checkpoint_steps(point.workdir), default=0)
  total = total_steps(point, events)
  if status is None:  # --summary_only: what the files say
    if is_finished(point):
      status = 'finished'
    elif record.get('status') in ('failed', 'incomplete'):
      status = record['status']
    else:
      status = 'incomplete' if os.path.isdir(point.workdir) else 'not-run'
  best_step = max(top1, key=lambda s: (top1[s], -s)) if top1 else None
  attempts = record.get('attempts')
  return dict(
      point=point.name,
      overrides=' '.join(f'{k}={cli_value(v)}' for k, v in point.overrides.items()),
      status=status,
      steps=steps,
      total_steps=total if total is not None else '',
      final_top1=top1[max(top1)] if top1 else None,
      best_top1=top1[best_step] if top1 else None,
      best_step=best_step if best_step is not None else '',
      final_eval_loss=loss[max(loss)] if loss else None,
      wall_time_s=sum(a['wall_time_s'] for a in attempts) if attempts else events.wall_time or None,
      error=record.get('error', '') if status in ('failed', 'incomplete') else '')


_STATUS_ORDER = ('finished', 'finished-earlier', 'incomplete', 'failed', 'not-run')


def _sort_key(row):  # best top-1 first; rows without one last, failed ones after unfinished ones
  best = row['best_top1']
  missing = best is None or math.isnan(best)
  return (missing, 0.0 if missing else -best, _STATUS_ORDER.index(row['status']), row['point'])


def _fmt(value, spec):
  return '' if value is None or value == '' else format(value, spec)


def write_summary(points: Sequence[Point], workdir: str, statuses: Mapping[str, str] | None = None
                  ) -> list[dict[str, Any]]:
  """DIR/summary.csv and DIR/summary.md: one row per point, best eval top-1 first. Returns the rows."""
  rows = sorted((summarize_point(p, (statuses or {}).get(p.name)) for p in points), key=_sort_key)
  with open(os.path.join(workdir, 'summary.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: '' if row[k] is None else row[k] for k in COLUMNS})
  keys = list(dict.fromkeys(k for p in points for k in p.overrides))
  by_name = {p.name: p for p in points}
  out = io.StringIO()
  done = sum(r['status'].startswith('finished') for r in rows)
  out.write(f'{done} of {len(rows)} points finished; sorted by best eval top-1. Eval top-1 in %; '
            f'TensorBoard: tensorboard --logdir={workdir}\n\n')
  header = ['#', 'point', *keys, 'status', 'steps', 'best top-1', 'final top-1', 'final eval loss', 'wall time',
            'error']
  out.write('| ' + ' | '.join(header) + ' |\n|' + '---|' * len(header) + '\n')
  for i, row in enumerate(rows, 1):
    overrides = by_name[row['point']].overrides
    steps = f'{row["steps"]}/{row["total_steps"]}' if row['total_steps'] != '' else str(row['steps'])
    wall = '' if row['wall_time_s'] is None else f'{row["wall_time_s"]:.0f} s'
    cells = [str(i), f'`{row["point"]}`', *(cli_value(overrides[k]) if k in overrides else '' for k in keys),
             row['status'], steps, _fmt(row['best_top1'] and 100 * row['best_top1'], '.2f'),
             _fmt(row['final_top1'] and 100 * row['final_top1'], '.2f'), _fmt(row['final_eval_loss'], '.4f'), wall,
             row['error'][:300]]
    out.write('| ' + ' | '.join(c.replace('|', '\\|').replace('\n', ' ') for c in cells) + ' |\n')
  with open(os.path.join(workdir, 'summary.md'), 'w') as f:
    f.write(out.getvalue())
  return rows


# ---------------------------------------------------------------------------------------------------------
# Command line.


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise SystemExit(f'unexpected arguments: {argv[1:]}')
  flag_values = flags.FLAGS
  config_arg = config_flags.get_config_filename(flag_values['config'])
  base_overrides = config_flags.get_override_values(flag_values['config'])
  workdir = flag_values.workdir
  try:
    points = make_points(config_arg, workdir, load_sweep(flag_values.sweep), base_overrides)
  except SweepError as e:
    print(f'sweep: error: {e}', file=sys.stderr)
    return 2
  if flag_values.dry_run:
    for point in points:
      print(point.command)
    return 0
  if flag_values.summary_only:
    rows = write_summary(points, workdir)
    print(f'wrote {os.path.join(workdir, "summary.md")} and summary.csv')
    return 0 if all(r['status'] == 'finished' for r in rows) else 1
  rows, status = run_sweep(points, workdir, sweep_info=dict(
      config=config_arg, sweep=flag_values.sweep, base_overrides=base_overrides),
      log=lambda msg: print(f'sweep: {msg}', file=sys.stderr, flush=True))
  with open(os.path.join(workdir, 'summary.md')) as f:
    print(f.read())
  failed = [r['point'] for r in rows if r['status'] not in ('finished', 'finished-earlier')]
  if failed:
    print(f'sweep: not finished: {", ".join(failed)} (see their {LOG_FILE})', file=sys.stderr)
  return status


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file('config', None, 'Base config file (as for main.py); --config.k=v flags '
                                  'apply to every point.', lock_config=True)
  flags.DEFINE_string('sweep', None, 'Sweep file: a Python file whose get_sweep() returns the points.')
  flags.DEFINE_string('workdir', None, 'Each point runs in WORKDIR/<point name>; summary.{csv,md} go here.')
  flags.DEFINE_bool('dry_run', False, 'Print the main.py command of every point and exit.')
  flags.DEFINE_bool('summary_only', False, 'Only write WORKDIR/summary.{csv,md} from what the points wrote.')
  flags.mark_flags_as_required(['config', 'sweep', 'workdir'])


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
  _define_flags()
  app.run(main)
