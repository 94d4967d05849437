"""The API of sweep files: a sweep is a list of points, a point a dict {config path: value}.

    from hatnet_jax.sweep import product, sweep

    def get_sweep():
      return product(sweep('base_lr', [1e-3, 2e-3]), sweep('drop_path_rate', [0.0, 0.1]))
"""
import builtins
import re
from typing import Any, Iterable, Mapping, Sequence


class SweepError(ValueError):
  """A sweep file or an override that cannot work; raised before any point runs."""


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
