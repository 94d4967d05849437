"""Points: each override dict of a sweep resolved against the base config (as main.py would parse it),
validated, named after the values that apply, and turned into its `python main.py ...` command."""
import dataclasses
import difflib
import hashlib
import importlib.util
import os
import re
import shlex
import sys
from typing import Any, Iterable, Mapping, Sequence

from hatnet_jax.sweep.api import SweepError, _key

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAIN = os.path.join(REPO_ROOT, 'main.py')
MAX_NAME_LEN = 120


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


def display_value(value: Any) -> str:
  """A resolved config value for names and tables ('None' for an unset field)."""
  return 'None' if value is None else cli_value(value.to_dict() if hasattr(value, 'to_dict') else value)


@dataclasses.dataclass(frozen=True)
class Point:
  name: str
  overrides: dict[str, Any]  # the point's own overrides, as the sweep file gave them
  settings: dict[str, Any]  # what applies: the swept keys' values in the resolved config (+ shadowing keys)
  argv: tuple[str, ...]  # the main.py command, sys.executable first
  workdir: str

  @property
  def command(self) -> str:
    """The command as printed (`python main.py ...`), for a shell or a cluster scheduler."""
    main = os.path.relpath(self.argv[1])
    return shlex.join(['python', self.argv[1] if main.startswith('..') else main, *self.argv[2:]])

  @property
  def main_args(self) -> tuple[str, ...]:
    """The arguments after main.py."""
    return tuple(self.argv[2:])


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


def _get(config, key: str) -> Any:
  node = config
  for part in key.split('.'):
    node = node[part]
  return node


def effective_settings(config, swept: Iterable[str]) -> dict[str, Any]:
  """The values of the swept keys in the resolved config, plus, for a swept `X_epochs` duration, `X_steps`
  when it is set (a `*_steps` field that is set wins over its `*_epochs` field: hatnet_jax.training.schedule), so a
  point of `num_epochs=10` run with a sweep-wide `--config.num_steps=20` shows both."""
  out = {}
  for key in swept:
    out[key] = _get(config, key)
    if key.endswith('_epochs'):
      steps_key = key[:-len('_epochs')] + '_steps'
      if steps_key not in swept and _has_path(config, steps_key) and _get(config, steps_key) is not None:
        out[steps_key] = _get(config, steps_key)
  return out


def parse_config(config_arg: str, flag_args: Sequence[str]):
  """The ConfigDict that `main.py --config=<config_arg> <flag_args>` trains with (ml_collections config
  flags: same file loading, same override parsing, locked config). Config files import `configs.default`:
  run from the repository root (as main.py is)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
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
    settings = effective_settings(config, point)
    name = point_name({k: display_value(v) if v is None else v for k, v in settings.items()})
    if name in names:
      if points[names[name]].settings == settings:
        raise SweepError(f'points {names[name]} and {i} are the same: {point}')
      name = f'{name}~{hashlib.sha1(repr(sorted(point.items())).encode()).hexdigest()[:10]}'
    names[name] = len(points)
    point_dir = os.path.join(workdir, name)
    argv = (sys.executable, main, f'--config={config_arg}', f'--workdir={point_dir}', *args)
    points.append(Point(name=name, overrides=point, settings=settings, argv=argv, workdir=point_dir))
  if not points:
    raise SweepError('the sweep has no points')
  return points


def load_sweep(path: str) -> list[dict[str, Any]]:
  """The override dicts that `get_sweep()` of the Python file at `path` returns."""
  if not os.path.isfile(path):
    raise SweepError(f'sweep file {path!r} does not exist')
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
