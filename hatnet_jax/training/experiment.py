"""The construction of a run: task, model, schedule, optimizer, mesh, state layout and the jitted steps.

`Experiment.create(config)` checks every setting before anything is compiled or loaded; the loop
(`hatnet_jax.training.train`), the tests and the benchmarks all build their steps through it.

Layout: a 1-D Mesh over all devices of all processes with axis 'data'. The batch is split over 'data';
parameters, optimizer state and EMA are replicated, or (config.shard_params) split FSDP-style over the
same axis. The train step donates the state, so only one copy lives on the devices.
"""
import dataclasses
import functools
from typing import TYPE_CHECKING, Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hatnet_jax.training import checkpoint
from hatnet_jax import layout
from hatnet_jax.training import optim
from hatnet_jax.training import schedule
from hatnet_jax.training import steps
from hatnet_jax import tasks
from hatnet_jax.training import xla_options

if TYPE_CHECKING:  # only for annotations: the GPU machine's image has no ml_collections
  import ml_collections

MODES = ('train', 'eval')


def validate_config(config: 'ml_collections.ConfigDict', num_devices: int) -> None:
  """Errors for settings that cannot work, raised before anything is compiled or loaded."""
  if config.mode not in MODES:
    raise ValueError(f'config.mode must be one of {MODES}; got {config.mode!r}')
  if config.grad_accum_steps < 1:
    raise ValueError(f'config.grad_accum_steps must be >= 1; got {config.grad_accum_steps}')
  layout.check_batch_size(config.batch_size, num_devices, accum=config.grad_accum_steps)
  for name in ('log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints'):
    if config[name] < 1:
      raise ValueError(f'config.{name} must be >= 1; got {config[name]}')
  if config.init_from:
    checkpoint.check_pretrained_path(config.init_from)


@dataclasses.dataclass
class Experiment:
  """Everything a run is built from. Use `Experiment.create(config)`."""
  config: 'ml_collections.ConfigDict'
  task: tasks.Task
  facts: tasks.DatasetFacts
  mesh: Mesh
  model: nn.Module
  learning_rate_fn: optax.Schedule
  tx: optax.GradientTransformation
  steps_per_epoch: int
  num_steps: int
  eval_every: int
  abstract_state: Any  # TrainState of jax.ShapeDtypeStruct with shardings (what restores take)
  shardings: Any
  train_step: Callable  # jitted (state, batch) -> (state, metrics); donates the state
  eval_step: Callable  # jitted (state, batch) -> {'': task.eval_outputs, 'ema_': the same with the EMA}
  compiler_options: dict | None  # XLA options the steps were jitted with (xla_options; None off CPU)

  @classmethod
  def create(cls, config: 'ml_collections.ConfigDict', *, mesh: Mesh | None = None,
             facts: tasks.DatasetFacts | None = None) -> 'Experiment':
    """Builds the run of `config` (`facts` skips reading the dataset, e.g. in tests)."""
    mesh = layout.create_mesh() if mesh is None else mesh
    validate_config(config, mesh.size)
    task = tasks.create(config)
    task.create_model(num_classes=1)  # checks config.model before the dataset is opened
    task.validate()
    facts = task.dataset_facts() if facts is None else facts
    model = task.create_model(facts.num_classes)
    per_epoch = schedule.steps_per_epoch(facts.num_train, config.batch_size)
    num_steps = schedule.to_steps(config.num_epochs, config.num_steps, per_epoch, name='num_epochs/num_steps')
    eval_every = schedule.to_steps(config.eval_every_epochs, config.eval_every_steps, per_epoch,
                                   name='eval_every_epochs/eval_every_steps')
    lr_fn = schedule.create_learning_rate_fn(config, per_epoch)
    tx = optim.create_optimizer(config, lr_fn)
    shapes = jax.eval_shape(_init_fn(config, task, model, tx), jax.random.PRNGKey(config.seed))
    shardings = layout.state_shardings(shapes, mesh, config)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    batch_sharding = layout.data_sharding(mesh)
    options = xla_options.compiler_options(config.get('cpu_compiler_options'))
    train_step = jax.jit(
        functools.partial(steps.train_step, task=task, model=model, tx=tx, learning_rate_fn=lr_fn,
                          num_classes=facts.num_classes, grad_accum_steps=config.grad_accum_steps,
                          ema_decay=config.ema_decay, mesh=mesh),
        in_shardings=(shardings, batch_sharding), out_shardings=(shardings, NamedSharding(mesh, P())),
        donate_argnums=(0,), compiler_options=options)
    # No out_shardings: sums come out replicated, per-example outputs stay split along the batch like the
    # batch (no all-gather on the devices when one process holds them all; train.evaluate fetches them).
    eval_step = jax.jit(functools.partial(steps.eval_step, task=task, model=model),
                        in_shardings=(shardings, batch_sharding), compiler_options=options)
    return cls(config=config, task=task, facts=facts, mesh=mesh, model=model, learning_rate_fn=lr_fn, tx=tx,
               steps_per_epoch=per_epoch, num_steps=num_steps, eval_every=max(eval_every, 1),
               abstract_state=abstract, shardings=shardings, train_step=train_step, eval_step=eval_step,
               compiler_options=options)

  def init_state(self, *, require_all: bool = False) -> steps.TrainState:
    """A fresh TrainState laid out on the mesh; params from config.init_from (fresh head) when set.

    require_all (evaluation): every parameter, the head included, must come from config.init_from."""
    init = jax.jit(_init_fn(self.config, self.task, self.model, self.tx), out_shardings=self.shardings)
    state = init(jax.random.PRNGKey(self.config.seed))
    path = self.config.init_from
    if path:
      params = checkpoint.load_params(path, state.params, require_all=require_all)
      # The optimizer state at step 0 does not depend on the parameter values (zeros), so it stays.
      state = state.replace(params=params, ema_params=params if state.ema_params is not None else None)
      saved = checkpoint.saved_collections(path)
      model_state = {name: checkpoint.load_params(path, tree, require_all=True, collection=name)
                     if name in saved else tree for name, tree in state.model_state.items()}
      missing = [name for name in state.model_state if name not in saved]
      if missing and require_all:
        raise ValueError(f'config.init_from={path} has no {", ".join(missing)}, which evaluation needs')
      state = state.replace(model_state=model_state)
    return state


def _init_fn(config, task, model, tx):
  """A function rng -> TrainState at step 0 (freshly initialised parameters)."""

  def init(rng):
    init_rng, train_rng = jax.random.split(rng)
    spec = task.init_input()
    variables = model.init({'params': init_rng}, jnp.zeros(spec.shape, spec.dtype), train=False)
    params = variables['params']
    model_state = {k: v for k, v in variables.items() if k != 'params'}
    return steps.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                            ema_params=params if config.ema_decay > 0 else None, rng=train_rng,
                            nonfinite_step=jnp.full((), -1, jnp.int32), model_state=model_state)

  return init
