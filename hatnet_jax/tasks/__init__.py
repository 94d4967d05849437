"""Tasks: one module per task (`classification`, `segmentation`, `detection`,
`instance_segmentation`), each a `base.Task` that owns
its model construction, loss, evaluation outputs and metrics, data iterators and TensorBoard pictures;
`tasks.create(config)` returns the one named by `config.task`. The training loop calls only `base.Task`'s
methods. Imports `models`, `data`, `metrics`, `visualization` and `layout`; never `training`, `tools` or
`sweep`.
"""
from hatnet_jax.tasks import base
from hatnet_jax.tasks.base import DatasetFacts, Task


def _classification():
  from hatnet_jax.tasks import classification  # pylint: disable=g-import-not-at-top
  return classification.Classification


def _segmentation():
  from hatnet_jax.tasks import segmentation  # pylint: disable=g-import-not-at-top
  return segmentation.Segmentation


def _detection():
  from hatnet_jax.tasks import detection  # pylint: disable=g-import-not-at-top
  return detection.Detection


def _instance_segmentation():
  from hatnet_jax.tasks import instance_segmentation  # pylint: disable=g-import-not-at-top
  return instance_segmentation.InstanceSegmentation


# name -> a function returning the Task class (imported on use: a task may need extra packages).
TASKS = {'classification': _classification, 'segmentation': _segmentation, 'detection': _detection,
         'instance_segmentation': _instance_segmentation}


def create(config) -> Task:
  """The task of `config.task` for this config; ValueError naming the field for an unknown task."""
  name = config.get('task', 'classification')
  if name not in TASKS:
    raise ValueError(f'config.task={name!r} is not a task; choose one of {sorted(TASKS)}')
  return TASKS[name]()(config)


__all__ = ['DatasetFacts', 'TASKS', 'Task', 'base', 'create']
