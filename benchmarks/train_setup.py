"""The trainer's experiment for a model and a synthetic batch on the devices: what model_speed.py and
roofline.py time (the trainer's own train step, hatnet_jax.training.experiment), and the same experiment with
every block visible to XLA's cost analysis."""
import types

import jax
import numpy as np

from configs import default as default_config
from configs import seg_default as seg_config
from hatnet_jax import layout, models, tasks
from hatnet_jax.training import experiment

NUM_CLASSES = 1000
SEG_CLASSES = 150  # ADE20K


def is_segmentation(args) -> bool:
  """Whether the model is a segmentation one (a SemanticFPN, the 'semfpn_*' models)."""
  return models.family(args.model)[1] is models.SemanticFPN


def trainer_config(args, dtype, remat, attention_impl, global_batch):
  """The trainer's config for the model: the ImageNet recipe, or the ADE20K one for 'semfpn_*' models."""
  c = seg_config.get_config() if is_segmentation(args) else default_config.get_config()
  c.model.update(name=args.model, dtype=dtype, remat=remat, attention_impl=attention_impl)
  c.batch_size = global_batch
  if is_segmentation(args):
    c.data.crop_size = args.image_size
  else:
    c.data.image_size = args.image_size
  c.num_steps, c.warmup_steps = 1000, 10
  return c


def setup(args, dtype: str, remat: bool, attention_impl: str, per_device: int) -> types.SimpleNamespace:
  """The trainer's experiment for the model on a 'data' mesh of all local devices, and a synthetic batch on
  the devices: namespace(mesh, config, facts, exp, batch, images, global_batch, data_sharding)."""
  mesh = layout.create_mesh(jax.local_devices())
  global_batch = per_device * mesh.size
  config = trainer_config(args, dtype, remat, attention_impl, global_batch)
  num_classes = SEG_CLASSES if is_segmentation(args) else NUM_CLASSES
  facts = tasks.DatasetFacts(name='synthetic', num_classes=num_classes, num_train=1000 * global_batch, num_eval=0)
  exp = experiment.Experiment.create(config, mesh=mesh, facts=facts)  # the trainer's own step
  data_sharding = layout.data_sharding(mesh)
  s = args.image_size
  images = jax.device_put(np.random.RandomState(0).randn(global_batch, s, s, 3).astype(np.float32), data_sharding)
  if is_segmentation(args):  # per-pixel labels, a tenth of them ignored
    pixels = np.random.RandomState(1).randint(0, SEG_CLASSES + SEG_CLASSES // 9, (global_batch, s, s))
    labels = jax.device_put(np.where(pixels >= SEG_CLASSES, 255, pixels).astype(np.int32), data_sharding)
  else:
    labels = jax.device_put(np.arange(global_batch, dtype=np.int32) % NUM_CLASSES, data_sharding)
  return types.SimpleNamespace(mesh=mesh, config=config, facts=facts, exp=exp, batch={'image': images, 'label': labels},
                               images=images, global_batch=global_batch, data_sharding=data_sharding)


def unrolled_experiment(setup_: types.SimpleNamespace) -> experiment.Experiment:
  """The same experiment with config.model.unroll (every block visible to XLA's cost analysis) and, on CPU,
  XLA's depthwise, attention and GroupNorm paths: the native kernels are custom calls, whose FLOPs and bytes XLA does
  not count."""
  config_u = setup_.config.copy_and_resolve_references()
  with config_u.unlocked():
    config_u.model.unroll = True
    if jax.default_backend() == 'cpu':
      config_u.model.update(models.xla_paths(config_u.model.get('depthwise_impl', 'auto'),
                                             config_u.model.get('attention_impl', ''),
                                             config_u.model.get('norm_impl', 'auto')))
  return experiment.Experiment.create(config_u, mesh=setup_.mesh, facts=setup_.facts)
