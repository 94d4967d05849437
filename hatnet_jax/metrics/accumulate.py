"""Host-side accumulators of a task's per-batch eval outputs: what `Task.eval_accumulator` returns.

The evaluation loop (`hatnet_jax.training.train.evaluate`) moves each batch's `Task.eval_outputs` to the host
as NumPy arrays (gathered across processes, in the global batch's row order) and passes them to `add`; after
the last batch, `result()` gives the task's metrics. Two kinds cover the tasks:

* `Sums`: the outputs are sums over the batch's real examples (counts, a confusion matrix); they are added up
  in 64 bits and a finalize function turns the totals into metrics. Classification and segmentation.
* `Examples`: the outputs are per-example arrays (leading axis = the batch) plus a validity mask of the real
  examples; the rows of real examples are kept, in eval order, and a finalize function gets them all at once.
  For metrics that need every prediction, such as COCO box/mask AP (detections per image -> COCOeval).

A task with both kinds of outputs composes them in its own accumulator (an object with `add` and `result`).
"""
from typing import Any, Callable, Mapping, Protocol

import jax
import numpy as np


class Accumulator(Protocol):
  """What the evaluation loop calls: `add` once per eval batch (on every process), then `result` once."""

  def add(self, outputs: Any) -> None:
    """One batch's eval outputs: the task's pytree with NumPy leaves (global batch, every process's rows)."""

  def result(self) -> dict[str, Any]:
    """The metrics over the whole eval split (scalars, and arrays for the task's summaries)."""


def _identity(x):
  return x


def _widen(value) -> np.ndarray:
  value = np.asarray(value)
  return value.astype(np.int64 if value.dtype.kind in 'iu' else np.float64)


class Sums:
  """Adds up per-batch sums (any pytree of arrays) on the host: integers in int64 and everything else in
  float64, so counts stay exact over any split size; `result()` is `finalize(totals)` (default: the totals)."""

  def __init__(self, finalize: Callable[[Any], dict[str, Any]] = _identity):
    self._finalize = finalize
    self._totals = None

  def add(self, outputs: Any) -> None:
    wide = jax.tree.map(_widen, outputs)
    self._totals = wide if self._totals is None else jax.tree.map(np.add, self._totals, wide)

  @property
  def totals(self) -> Any:
    return self._totals

  def result(self) -> dict[str, Any]:
    if self._totals is None:
      raise ValueError('Sums.result() before any add(): the eval split gave no batch')
    return self._finalize(self._totals)


class Examples:
  """Collects per-example outputs: `add` takes a flat dict of arrays whose leading axis is the batch, one of
  them (`mask`) > 0 on real examples and 0 on padding rows; it keeps the real rows. `result()` is
  `finalize(arrays)` with every other key's rows concatenated in eval order (the mask itself is dropped;
  default: the arrays). Memory grows with the split: keep the outputs compact (e.g. top-k detections), or
  pass `compact`, which maps each batch's real rows (a dict of arrays) to what is kept instead (e.g. masks
  encoded as RLEs in an object array), once per batch."""

  def __init__(self, finalize: Callable[[Mapping[str, np.ndarray]], dict[str, Any]] = _identity, *,
               mask: str = 'mask',
               compact: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]] | None = None):
    self._finalize = finalize
    self._mask = mask
    self._compact = compact
    self._rows: dict[str, list[np.ndarray]] = {}

  def add(self, outputs: Mapping[str, Any]) -> None:
    if self._mask not in outputs:
      raise KeyError(f'Examples: the eval outputs have no validity mask {self._mask!r} (keys: {sorted(outputs)})')
    keep = np.asarray(outputs[self._mask]) > 0
    if keep.ndim != 1:
      raise ValueError(f'Examples: the mask {self._mask!r} must be 1-D [batch]; got shape {keep.shape}')
    rows = {}
    for key, value in outputs.items():
      if key == self._mask:
        continue
      value = np.asarray(value)
      if value.shape[:1] != keep.shape:
        raise ValueError(f'Examples: {key!r} has shape {value.shape}, not a leading batch axis of '
                         f'{keep.shape[0]} (as the mask {self._mask!r})')
      rows[key] = value[keep]
    if self._compact is not None:
      rows = self._compact(rows)
    for key, value in rows.items():
      self._rows.setdefault(key, []).append(value)

  @property
  def num_examples(self) -> int:
    first = next(iter(self._rows.values()), [])
    return sum(len(rows) for rows in first)

  def result(self) -> dict[str, Any]:
    return self._finalize({key: np.concatenate(rows) for key, rows in self._rows.items()})
