"""Checkpoints with orbax: the training state under DIR/checkpoints, and pretrained (converted) weights.

Training checkpoints are step directories DIR/checkpoints/<step>/state holding the whole TrainState (step,
params, optimizer state, EMA params, rng). The input pipeline position is the step itself: the data
iterator is deterministic in (seed, step). Arrays are restored onto whatever mesh the abstract target
names, so a run saved on 8 devices restores onto 4 (or onto FSDP-sharded parameters).

Pretrained weights (`hatnet_jax.convert` output, or any orbax PyTree with a top-level 'params' entry, e.g.
DIR/checkpoints/<step>/state) load with `load_params`, which keeps fresh values for the classifier head
when its shape differs (fine-tuning on another number of classes).
"""
import os
from typing import Any, Mapping, Sequence

import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as policies

STATE_ITEM = 'state'
BEST_METRIC = 'top1'  # the eval metric (higher is better) that `keep_best` ranks checkpoints by


class CheckpointManager:
  """Asynchronous saves of the train state; keeps the last `max_to_keep` and optionally the best by top-1."""

  def __init__(self, directory: str, *, max_to_keep: int, keep_best: bool, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    policy = policies.LatestN(n=max_to_keep)
    if keep_best:
      best = policies.BestN(get_metric_fn=lambda metrics: metrics[BEST_METRIC], n=1,
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

    `metrics` (e.g. {'top1': ...} from the eval at this step) rank the checkpoint for `keep_best`.
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

  def wait_until_finished(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


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
