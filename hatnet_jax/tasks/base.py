"""The seam between the training loop and a task (classification, segmentation, later detection).

A task owns everything that differs between tasks: the dataset's facts, building the model from
`config.model`, the train loss and its metrics, what the eval step outputs and how those outputs become
metrics, the data iterators, which metric ranks the best checkpoint, and what it writes to TensorBoard
beyond scalars. `hatnet_jax.training.train` runs the loop (steps, logging, evaluation, checkpoints, preemption)
and knows no task; `hatnet_jax.training.steps` wraps a task's loss into the optimizer update.

Evaluation contract. Per eval batch, inside the jitted eval step, `eval_outputs(model, variables, batch)`
returns a pytree of arrays; the loop moves it to the host (NumPy, gathered across processes: leaves whose
leading axis is the batch come back with all of the global batch's rows, in order) and hands it to the
task's accumulator, `eval_accumulator()`, one per weight set (the weights, and their EMA when kept); after the
last batch, `accumulator.result()` is the task's metrics. Two shapes of it (`hatnet_jax.metrics.accumulate`):

* sums, the simple case and the default: `eval_sums` returns sums over the batch's real examples
  (batch['mask']); `accumulate.Sums` adds them up in 64 bits and calls `finalize(totals)`. A task of this
  kind implements `eval_sums` and `finalize` only (classification, segmentation).
* per-example outputs, for metrics that need every prediction (COCO AP): `eval_outputs` returns arrays with
  a leading batch axis plus the batch's validity mask (left sharded along the batch on the devices), and
  `eval_accumulator` returns `accumulate.Examples(finalize_fn)`, which keeps the real rows in eval order and
  finalises from all of them at once. Such a task overrides `eval_outputs` and `eval_accumulator` instead.

Adding a task: a module in this package with a `Task` subclass, an entry in `tasks.TASKS`, and a config
whose `task` field names it.
"""
import abc
import dataclasses
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import jax
import numpy as np
from flax import linen as nn

from hatnet_jax.metrics import accumulate

if TYPE_CHECKING:  # only for the annotation: the tasks import without ml_collections (e.g. a bare GPU image)
  import ml_collections


@dataclasses.dataclass(frozen=True)
class DatasetFacts:
  """What the loop needs to know about a task's data without building a pipeline."""
  name: str
  num_classes: int
  num_train: int
  num_eval: int
  class_names: tuple[str, ...] = ()


class Task(abc.ABC):
  """One task: construct with the run's config; every method below is called by the loop or the step."""

  name: str = ''
  best_metric: str = ''  # a key of the eval metrics (higher is better): ranks the kept best checkpoint
  workdir: str | None = None  # the run's directory, set by the trainer: where evaluation artefacts may go

  def __init__(self, config: 'ml_collections.ConfigDict'):
    self.config = config

  # ---- data (host) ----
  @abc.abstractmethod
  def dataset_facts(self) -> DatasetFacts:
    """Cheap facts about the dataset (may prepare small built-in datasets on first use)."""

  @abc.abstractmethod
  def train_iterator(self, mesh, start_step: int) -> Iterator[dict]:
    """Global train batches, a function of (config.seed, step); has `close()` and `num_skipped`."""

  @abc.abstractmethod
  def eval_iterator(self, mesh) -> Iterator[dict]:
    """One exact pass over the eval split (global batches with a 'mask' of real examples); has `close()`."""

  # ---- model ----
  @abc.abstractmethod
  def create_model(self, num_classes: int) -> nn.Module:
    """`models.create(**config.model, num_classes=...)` (raises ValueError for bad settings)."""

  @abc.abstractmethod
  def init_input(self) -> jax.ShapeDtypeStruct:
    """The input the model is initialised with (batch of 1)."""

  def validate(self) -> None:
    """Task-specific config checks, before anything is compiled; raise ValueError naming the field."""

  # ---- steps (pure JAX, inside jit) ----
  def prepare_train_batch(self, rng: jax.Array, batch: dict, num_classes: int) -> dict:
    """Batch-level augmentation done once per step before microbatching (e.g. mixup); default: none."""
    del rng, num_classes
    return batch

  @abc.abstractmethod
  def train_loss(self, model: nn.Module, variables: Mapping[str, Any], batch: dict, rng: jax.Array,
                 mutable: tuple[str, ...]) -> tuple[jax.Array, tuple[dict, Any]]:
    """(mean loss, (metrics averaged over the batch, updated mutable collections or {}))."""

  def eval_outputs(self, model: nn.Module, variables: Mapping[str, Any], batch: dict) -> Any:
    """One eval batch's outputs for `eval_accumulator` (a pytree of arrays); default: `eval_sums`."""
    return self.eval_sums(model, variables, batch)

  def eval_sums(self, model: nn.Module, variables: Mapping[str, Any], batch: dict) -> dict:
    """Per-batch sums over real examples (batch['mask']) that `finalize` turns into metrics."""
    raise NotImplementedError(f'{type(self).__name__}: implement eval_sums and finalize, or eval_outputs and '
                              f'eval_accumulator')

  # ---- metrics (host) ----
  def eval_accumulator(self) -> accumulate.Accumulator:
    """A fresh accumulator of `eval_outputs` over one pass of the eval split (`add` per batch, then `result`
    -> metrics); default: `accumulate.Sums(self.finalize)`."""
    return accumulate.Sums(self.finalize)

  def finalize(self, totals: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Totals of `eval_sums` over the eval split -> metrics (scalars, and arrays for the task's summaries)."""
    raise NotImplementedError(f'{type(self).__name__}: implement finalize (with eval_sums), or eval_accumulator')

  @abc.abstractmethod
  def describe(self, metrics: Mapping[str, Any]) -> str:
    """A short human-readable summary of finalised metrics for the log ('top-1 93.5%, ...')."""

  def write_eval_summaries(self, writer, step: int, metrics: Mapping[str, Any], variables, model, mesh) -> None:
    """Extra TensorBoard output after an evaluation (tables, prediction images); default: none."""

  def panel_iterator(self, mesh) -> Iterator[dict]:
    """The eval batches the pictures are drawn from (`panel_predictions` takes the first); default: the eval
    iterator (a task may add what only the pictures need, e.g. the GT masks)."""
    return self.eval_iterator(mesh)

  def panel_predictions(self, model, variables, mesh, predict) -> tuple[dict, Any] | None:
    """(first eval batch, predict(model, variables, batch)) for TensorBoard pictures, on process 0; None on the
    other processes and when config.log_images_count is 0.

    Every process must call it: the batch spans all processes' devices, so the jitted predict is a
    multi-process program (process 0 alone would wait on the others, or fail when they exit), and each one
    waits for it to end before leaving. One jit per model for the whole run (a new jit per evaluation traced
    and compiled it again)."""
    if self.config.get('log_images_count', 0) <= 0:
      return None
    it = self.panel_iterator(mesh)
    try:
      batch = next(iter(it))
    finally:
      it.close()
    cached = getattr(self, '_panel_predict', None)
    if cached is None or cached[0] is not model:
      cached = self._panel_predict = (model, jax.jit(lambda v, b: predict(model, v, b)))
    pred = jax.block_until_ready(cached[1](variables, batch))
    return (batch, pred) if jax.process_index() == 0 else None
