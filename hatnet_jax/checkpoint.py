"""Checkpoints with orbax: the training state under DIR/checkpoints, and pretrained (converted) weights.

Training checkpoints are step directories DIR/checkpoints/<step>/state holding the whole TrainState (step,
params, optimizer state, EMA params, rng). The input pipeline position is the step itself: the data
iterator is deterministic in (seed, step). Arrays are restored onto whatever mesh the abstract target
names, so a run saved on 8 devices restores onto 4 (or onto FSDP-sharded parameters).

Pretrained weights (`hatnet_jax.convert` output, or any orbax PyTree with a top-level 'params' entry, e.g.
DIR/checkpoints/<step>/state) load with `load_params`, which keeps fresh values for the classifier head
when its shape differs (fine-tuning on another number of classes).
"""
import gc
import logging as logging_lib
import os
import sys
from typing import Any, Mapping, Sequence

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

STATE_ITEM = 'state'
BEST_METRIC = 'top1'  # default name of the eval metric (higher is better) that `keep_best` ranks by
DAMAGED_SUFFIX = '.damaged'


class NoUsableCheckpointError(RuntimeError):
  """Every checkpoint in the directory failed to restore (each was moved aside)."""


def _first_line(error: BaseException, limit: int = 240) -> str:
  """`Type: first line` of an error, without tensorstore's spec dump and at most `limit` characters."""
  text = str(error).strip().splitlines()
  line = (text[0] if text else '').split(' [tensorstore_spec')[0]
  line = line if len(line) <= limit else line[:limit] + ' ...'
  return f'{type(error).__name__}: {line}'.strip()


class CheckpointManager:
  """Asynchronous saves of the train state; keeps the last `max_to_keep` and optionally the best by one
  eval metric (`best_metric`, higher is better)."""

  def __init__(self, directory: str, *, max_to_keep: int, keep_best: bool, async_save: bool = True,
               best_metric: str = BEST_METRIC):
    self.directory = os.path.abspath(directory)
    self.best_metric = best_metric
    policy = policies.LatestN(n=max_to_keep)
    if keep_best:
      best = policies.BestN(get_metric_fn=lambda metrics: metrics[best_metric], n=1,
                            keep_checkpoints_without_metrics=False)
      policy = policies.AnyPreservationPolicy([policy, best])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, enable_async_checkpointing=async_save,
                                           create=True, cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, item_names=(STATE_ITEM,), options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> Sequence[int]:
    return self._manager.all_steps()

  def save(self, step: int, state: Any, *, metrics: Mapping[str, float] | None = None) -> bool:
    """Starts an asynchronous save of `state` at `step` (no-op if that step exists). Returns whether it saved.

    `metrics` (e.g. {best_metric: ...} from the eval at this step) rank the checkpoint for `keep_best`.
    Every leaf must be a jax.Array (global when several processes run).
    """
    if step in self._manager.all_steps():
      return False
    metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
    saved = self._manager.save(step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state)}),
                               metrics=metrics, force=True)
    if saved:
      logging.info('Saving checkpoint at step %d to %s (asynchronously).', step, self.directory)
    return saved

  def restore(self, abstract_state: Any, step: int | None = None) -> Any:
    """The state at `step` (default: the latest), laid out as `abstract_state` says (jax.ShapeDtypeStruct
    leaves with shardings: another device count or sharding than at save time is fine)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    restored = self._manager.restore(
        step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(abstract_state)}))
    logging.info('Restored checkpoint at step %d from %s.', step, self.directory)
    return restored[STATE_ITEM]

  def restore_latest(self, abstract_state: Any) -> Any | None:
    """The newest state that restores, walking back past damaged checkpoints; None if there are none.

    A step that fails to restore (truncated or deleted files, garbage metadata: any error from orbax,
    tensorstore or json) is logged in one warning line, moved aside to `<step>.damaged` (never deleted,
    so nothing is lost if the failure had another cause), and the next older step is tried. Raises
    NoUsableCheckpointError listing every step tried when none restores.
    """
    tried = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        with _quiet_asyncio():
          return self.restore(abstract_state, step)
      except Exception as e:  # pylint: disable=broad-except
        # Any failure here means this step's files cannot be used; the older steps may still be fine.
        moved = self._move_aside(step)
        logging.warning('Checkpoint at step %d in %s could not be restored (%s); moved it to %s and trying '
                        'the previous one.', step, self.directory, _first_line(e), moved)
        tried.append(f'step {step}: {_first_line(e)} (moved to {moved})')
    if tried:
      raise NoUsableCheckpointError(
          f'No checkpoint in {self.directory} could be restored; tried:\n  ' + '\n  '.join(tried) +
          '\nThe damaged steps were moved aside, not deleted. Start again from scratch by running the same '
          'command (a new run starts at step 0), or restore the files from a backup.')
    return None

  def _move_aside(self, step: int) -> str:
    """Renames DIR/<step> to DIR/<step>.damaged (.damaged.1, ... if taken) on process 0; all processes wait."""
    source = os.path.join(self.directory, str(step))
    target = source + DAMAGED_SUFFIX
    n = 0
    while os.path.exists(target):
      n += 1
      target = f'{source}{DAMAGED_SUFFIX}.{n}'
    if jax.process_index() == 0 and os.path.exists(source):
      os.rename(source, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'hatnet_move_aside_{step}')
    self._manager.reload()
    return target

  def wait_until_finished(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


class _quiet_asyncio:
  """Silences what a failed orbax restore leaves behind: asyncio's 'Task exception was never retrieved'
  log records and, when its abandoned coroutines are collected, 'Exception ignored ... Event loop is
  closed' (over a hundred of each per damaged checkpoint). Other unraisable errors still print."""

  def __enter__(self):
    self._logger = logging_lib.getLogger('asyncio')
    self._level = self._logger.level
    self._logger.setLevel(logging_lib.CRITICAL)
    self._hook = sys.unraisablehook

    def hook(unraisable):
      if not (isinstance(unraisable.exc_value, RuntimeError) and 'Event loop is closed' in str(unraisable.exc_value)):
        self._hook(unraisable)

    sys.unraisablehook = hook

  def __exit__(self, *exc):
    gc.collect()  # collect the abandoned coroutines now, while their noise is filtered
    sys.unraisablehook = self._hook
    self._logger.setLevel(self._level)


def _tree(metadata) -> Any:
  """The nested dict of array metadata out of what `Checkpointer.metadata` returns (versions differ)."""
  for attr in ('item_metadata', 'tree'):
    if hasattr(metadata, attr) and getattr(metadata, attr) is not None:
      metadata = getattr(metadata, attr)
  return metadata


def _key_name(k) -> str:
  return str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k))))


def load_params(path: str, params: Any, *, reinit: Sequence[str] = ('head',), require_all: bool = False) -> Any:
  """`params` (concrete jax.Arrays, e.g. freshly initialised) with values from the orbax PyTree at `path`.

  `path` holds {'params': ...}, as written by `python -m hatnet_jax.convert`, or is a training
  checkpoint's DIR/checkpoints/<step>/state. Leaves under a top-level key in `reinit` whose shape differs
  from the checkpoint's (or which the checkpoint lacks) keep their values from `params`: a fresh classifier
  head for another number of classes. Every other leaf must be in the checkpoint with the same shape.
  With `require_all` (evaluation), no leaf may be missing. Values are cast to the dtype of `params` and
  placed with its shardings.
  """
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'pretrained checkpoint {path!r} does not exist (config.init_from)')
  checkpointer = ocp.PyTreeCheckpointer()
  saved = _tree(checkpointer.metadata(path))
  if not isinstance(saved, Mapping) or 'params' not in saved:
    raise ValueError(f'{path} is not a checkpoint of {{"params": ...}} (as written by hatnet_jax.convert); '
                     f'top-level keys: {sorted(saved) if isinstance(saved, Mapping) else type(saved)}')
  saved = saved['params']

  def lookup(tree, keys):
    for k in keys:
      if not isinstance(tree, Mapping) or k not in tree:
        return None
      tree = tree[k]
    return tree

  item, fresh = {}, []
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = [_key_name(k) for k in key_path]
    name = '/'.join(keys)
    meta = lookup(saved, keys)
    if meta is not None and tuple(meta.shape) == tuple(leaf.shape):
      node = item
      for k in keys[:-1]:
        node = node.setdefault(k, {})
      node[keys[-1]] = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
      continue
    found = 'missing' if meta is None else f'of shape {tuple(meta.shape)}'
    if require_all or keys[0] not in reinit:
      raise ValueError(f'pretrained checkpoint {path}: the model parameter {name} of shape {tuple(leaf.shape)} '
                       f'is {found} in the checkpoint; was it written for another model or number of classes '
                       f'(config.model, config.model_overrides, dataset)?')
    fresh.append(f'{name} (checkpoint: {found}, model: {tuple(leaf.shape)})')
  if fresh:
    logging.info('Pretrained weights from %s; freshly initialised: %s', path, ', '.join(fresh))
  restore_args = ocp.checkpoint_utils.construct_restore_args(item)
  restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
      item={'params': item}, restore_args={'params': restore_args}, partial_restore=True))['params']

  def merge(key_path, leaf):
    value = lookup(restored, [_key_name(k) for k in key_path])
    return leaf if value is None else value

  return jax.tree_util.tree_map_with_path(merge, params)
