"""Checkpoints with orbax: the training state under DIR/checkpoints, and pretrained (converted) weights.

Training checkpoints are step directories DIR/checkpoints/<step>/state holding the whole TrainState (step,
params, optimizer state, EMA params, rng). The input pipeline position is the step itself: the data
iterator is deterministic in (seed, step). Arrays are restored onto whatever mesh the abstract target
names, so a run saved on 8 devices restores onto 4 (or onto FSDP-sharded parameters).

Pretrained weights (`hatnet_jax.tools.convert` output, or any orbax PyTree with a top-level 'params' entry, e.g.
DIR/checkpoints/<step>/state) load with `load_params`, which keeps fresh values for the classifier head
when its shape differs (fine-tuning on another number of classes).
"""
import dataclasses
import gc
import json
import logging as logging_lib
import os
import sys
from typing import Any, Mapping, Sequence

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from flax import traverse_util
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


class CheckpointMismatchError(ValueError):
  """A readable checkpoint whose arrays do not fit the model/config of this run."""


def _leaf_shapes(tree) -> list[tuple]:
  return sorted(tuple(getattr(x, 'shape', ())) for x in jax.tree.leaves(tree))


def _restore_target(abstract_state: Any, saved: Any, what: str) -> Any:
  """What to restore `saved` (the checkpoint's metadata tree) into: the abstract state itself, or, for a
  checkpoint written before a field with no arrays was added to the state (TrainState.model_state), a
  dict of the fields it has. Raises CheckpointMismatchError where the arrays differ (another model,
  number of classes or optimizer setting), so such a checkpoint is not taken for a damaged one."""
  if not isinstance(saved, Mapping) or not dataclasses.is_dataclass(abstract_state):
    return abstract_state
  fields = {f.name: getattr(abstract_state, f.name) for f in dataclasses.fields(abstract_state)}
  problems = []
  for name, value in fields.items():
    if name not in saved:
      if jax.tree.leaves(value):
        problems.append(f'{name}: not in the checkpoint')
      continue
    mine, theirs = _leaf_shapes(value), _leaf_shapes(saved[name])
    if mine != theirs:
      problems.append(f'{name}: {len(theirs)} arrays in the checkpoint, {len(mine)} in this run'
                      + ('' if len(mine) != len(theirs) else ' (of other shapes)'))
  problems += [f'{name}: in the checkpoint only' for name in saved if name not in fields]
  if problems:
    raise CheckpointMismatchError(
        f'{what} does not fit this run ({"; ".join(problems)}): it was written for another model, number of '
        f'classes or optimizer setting. Train in a new --workdir, or use the config that wrote it.')
  if set(saved) == set(fields):
    return abstract_state
  return {name: fields[name] for name in saved}


class _KeepBest(policies.PreservationPolicy):
  """Preserves the step with the best recorded eval metric (see CheckpointManager.record_eval)."""

  def __init__(self):
    self.step = None

  def should_preserve(self, checkpoints, *, context):
    del context
    return [c.step == self.step for c in checkpoints]


class CheckpointManager:
  """Asynchronous saves of the train state; keeps the last `max_to_keep` and optionally the best by one
  eval metric (`best_metric`, higher is better).

  The best is tracked in DIR/best.json ({"metric", "value", "step"}) rather than in orbax's per-step
  metrics, so that a step can be saved *before* its evaluation runs (an evaluation that fails then loses
  no training) and ranked once the evaluation is done.
  """

  def __init__(self, directory: str, *, max_to_keep: int, keep_best: bool, async_save: bool = True,
               best_metric: str = BEST_METRIC):
    self.directory = os.path.abspath(directory)
    self.best_metric = best_metric
    self._best_file = os.path.join(self.directory, 'best.json')
    self.keep_best = keep_best
    self._keep_best = _KeepBest()
    self.best = self._read_best() if keep_best else None
    if self.best:
      self._keep_best.step = self.best['step']
    policy = policies.LatestN(n=max_to_keep)
    if keep_best:
      policy = policies.AnyPreservationPolicy([policy, self._keep_best])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, enable_async_checkpointing=async_save,
                                           create=True, cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, item_names=(STATE_ITEM,), options=options)

  def _read_best(self) -> dict | None:
    try:
      with open(self._best_file) as f:
        best = json.load(f)
      return best if best.get('metric') == self.best_metric else None
    except (OSError, ValueError):
      return None

  def record_eval(self, step: int, value: float) -> bool:
    """Records the eval metric of the checkpoint at `step`; returns whether it is the new best (kept)."""
    if not self.keep_best or self.best is not None and value <= self.best['value']:
      return False
    self.best = {'metric': self.best_metric, 'value': float(value), 'step': int(step)}
    self._keep_best.step = int(step)
    if jax.process_index() == 0:
      os.makedirs(self.directory, exist_ok=True)
      tmp = self._best_file + '.tmp'
      with open(tmp, 'w') as f:
        json.dump(self.best, f)
      os.replace(tmp, self._best_file)
    return True

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> Sequence[int]:
    return self._manager.all_steps()

  def save(self, step: int, state: Any, *, metrics: Mapping[str, float] | None = None) -> bool:
    """Starts an asynchronous save of `state` at `step` (no-op if that step exists). Returns whether it saved.

    `metrics` (e.g. {best_metric: ...} from an eval at this step) rank it at once (see `record_eval`).
    Every leaf must be a jax.Array (global when several processes run).
    """
    if step in self._manager.all_steps():
      return False
    if self.keep_best and metrics and metrics.get(self.best_metric) is not None:
      self.record_eval(step, metrics[self.best_metric])
    saved = self._manager.save(step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state)}),
                               force=True)
    if saved:
      logging.info('Saving checkpoint at step %d to %s (asynchronously).', step, self.directory)
    return saved

  def restore(self, abstract_state: Any, step: int | None = None) -> Any:
    """The state at `step` (default: the latest), laid out as `abstract_state` says (jax.ShapeDtypeStruct
    leaves with shardings: another device count or sharding than at save time is fine)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    path = os.path.join(self.directory, str(step), STATE_ITEM)
    saved = _read_metadata(path)
    target = _restore_target(abstract_state, saved, f'The checkpoint at step {step} in {self.directory}')
    restored = self._manager.restore(
        step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(target)}))[STATE_ITEM]
    logging.info('Restored checkpoint at step %d from %s.', step, self.directory)
    return abstract_state.replace(**restored) if isinstance(target, dict) else restored

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
      except CheckpointMismatchError:
        raise  # intact, but for another model or config: nothing to move aside
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


def _drop_closed_loop_noise(previous_hook):
  """An unraisable-exception hook that drops 'Event loop is closed' and passes everything else on."""

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError) and 'Event loop is closed' in str(unraisable.exc_value)):
      previous_hook(unraisable)

  hook.drops_closed_loop_noise = True
  return hook


class _quiet_asyncio:
  """Silences what a failed orbax restore leaves behind: asyncio's 'Task exception was never retrieved'
  log records while restoring and, whenever its abandoned coroutines are collected later (up to the
  interpreter's exit), 'Exception ignored ... Event loop is closed' (over a hundred of each per damaged
  checkpoint). The latter filter stays installed for the process; other unraisable errors still print."""

  def __enter__(self):
    self._logger = logging_lib.getLogger('asyncio')
    self._level = self._logger.level
    self._logger.setLevel(logging_lib.CRITICAL)
    if not getattr(sys.unraisablehook, 'drops_closed_loop_noise', False):
      sys.unraisablehook = _drop_closed_loop_noise(sys.unraisablehook)

  def __exit__(self, *exc):
    gc.collect()  # most abandoned coroutines go now, while asyncio's logger is quiet
    self._logger.setLevel(self._level)


def _read_metadata(path: str) -> Any:
  """The array-metadata tree of the PyTree checkpoint at `path` (without orbax's warning that a step's
  own _CHECKPOINT_METADATA sits one level up)."""
  logger = logging_lib.getLogger('absl')
  level = logger.level
  logger.setLevel(logging_lib.ERROR)
  try:
    return _tree(ocp.PyTreeCheckpointer().metadata(path))
  finally:
    logger.setLevel(level)


def _tree(metadata) -> Any:
  """The nested dict of array metadata out of what `Checkpointer.metadata` returns (versions differ)."""
  for attr in ('item_metadata', 'tree'):
    if hasattr(metadata, attr) and getattr(metadata, attr) is not None:
      metadata = getattr(metadata, attr)
  return metadata


def _steps_in(directory: str) -> list[int]:
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []


def has_steps(directory: str) -> bool:
  """Whether `directory` holds any checkpoint step (damaged ones included; nothing is read)."""
  return bool(_steps_in(directory))


def saved_collections(path: str) -> list[str]:
  """The top-level entries of the PyTree checkpoint at `path` ('params', 'batch_stats', ...)."""
  saved = _read_metadata(check_pretrained_path(path))
  return sorted(saved) if isinstance(saved, Mapping) else []


def check_pretrained_path(path: str) -> str:
  """The absolute path if `path` is an orbax PyTree checkpoint (config.init_from); otherwise a
  FileNotFoundError/ValueError that says which paths would work."""
  path = os.path.abspath(path)
  fix = ('config.init_from takes a directory written by `python -m hatnet_jax.tools.convert` or a training '
         "checkpoint's DIR/checkpoints/<step>/state")
  if not os.path.isdir(path):
    raise FileNotFoundError(f'config.init_from={path} does not exist. {fix}.')
  if os.path.exists(os.path.join(path, '_METADATA')):
    return path
  for checkpoints in (os.path.join(path, 'checkpoints'), path):
    steps = _steps_in(checkpoints)
    if steps:
      raise ValueError(f'config.init_from={path} is a training run, not a checkpoint: use '
                       f'{os.path.join(checkpoints, str(steps[-1]), STATE_ITEM)} (steps there: '
                       f'{", ".join(map(str, steps))}).')
  if os.path.isdir(os.path.join(path, STATE_ITEM)):
    raise ValueError(f'config.init_from={path} is a checkpoint step directory: use '
                     f'{os.path.join(path, STATE_ITEM)}.')
  raise ValueError(f'config.init_from={path} is not an orbax checkpoint (no _METADATA file). {fix}.')


def load_params(path: str, params: Any, *, reinit: Sequence[str] = ('head',), require_all: bool = False,
                prefix: Sequence[str] | None = None, collection: str = 'params') -> Any:
  """`params` (concrete jax.Arrays, e.g. freshly initialised) with values from the orbax PyTree at `path`.

  `path` holds {'params': ...}, as written by `python -m hatnet_jax.tools.convert`, or is a training
  checkpoint's DIR/checkpoints/<step>/state. Leaves under a top-level key in `reinit` whose shape differs
  from the checkpoint's (or which the checkpoint lacks) keep their values from `params`: a fresh classifier
  head for another number of classes. Every other leaf must be in the checkpoint with the same shape.
  With `require_all` (evaluation), no leaf may be missing. `prefix` reads the checkpoint's parameters
  into the subtree `params[prefix...]` only (e.g. ('backbone',): a classifier's weights into a
  segmentation model's backbone; the default picks that when `params` has a 'backbone' and the checkpoint
  has none). `collection` reads another top-level entry than 'params' (e.g. 'batch_stats').
  Values are cast to the dtype of `params` and placed with its shardings.
  """
  path = check_pretrained_path(path)
  checkpointer = ocp.PyTreeCheckpointer()
  saved = _read_metadata(path)
  if not isinstance(saved, Mapping) or collection not in saved:
    raise ValueError(f'config.init_from={path} is not a checkpoint of {{"{collection}": ...}} (as written by '
                     f'hatnet_jax.tools.convert); its top-level keys: '
                     f'{sorted(saved) if isinstance(saved, Mapping) else type(saved).__name__}')
  if prefix is None:
    prefix = ('backbone',) if 'backbone' in params and 'backbone' not in saved[collection] else ()
  saved = traverse_util.flatten_dict(saved[collection])
  prefix = tuple(prefix)
  target = traverse_util.flatten_dict(params)
  item, fresh = {}, []
  for keys, leaf in target.items():
    if keys[:len(prefix)] != prefix:
      if require_all:
        raise ValueError(f'config.init_from={path} holds only the {"/".join(prefix)} of the model, but evaluation '
                         f'needs every parameter ({"/".join(keys)} is not in it)')
      fresh.append('/'.join(keys))
      continue
    rel = keys[len(prefix):]
    meta = saved.get(rel)
    if meta is not None and tuple(meta.shape) == tuple(leaf.shape):
      item[rel] = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
      continue
    found = 'missing' if meta is None else f'of shape {tuple(meta.shape)}'
    if require_all or rel[0] not in reinit:
      raise ValueError(f'config.init_from={path}: the model parameter {"/".join(keys)} of shape '
                       f'{tuple(leaf.shape)} is {found} in the checkpoint; was it written for another model or '
                       f'number of classes (config.model, dataset)?')
    fresh.append(f'{"/".join(keys)} (checkpoint: {found}, model: {tuple(leaf.shape)})')
  if fresh:
    shown = fresh if len(fresh) <= 12 else fresh[:12] + [f'... ({len(fresh)} in all)']
    logging.info('Pretrained %s from %s; freshly initialised: %s', collection, path, ', '.join(shown))
  item = traverse_util.unflatten_dict(item)
  restore_args = ocp.checkpoint_utils.construct_restore_args(item)
  restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
      item={collection: item}, restore_args={collection: restore_args}, partial_restore=True))[collection]
  restored = {prefix + k: v for k, v in traverse_util.flatten_dict(restored).items()}
  return traverse_util.unflatten_dict({k: restored.get(k, v) for k, v in target.items()})
