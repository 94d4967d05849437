"""Shared by the tool tests: a small HAT-Net (all four stages, a few channels) with random weights saved the way
`python -m hatnet_jax.tools.convert` saves them, and a real photograph (scikit-learn's china.jpg)."""
import json

import jax
import jax.numpy as jnp
import numpy as np

OVERRIDES = dict(dims=(16, 32, 48, 64), head_dim=16, depths=(2, 1, 1, 1))
OVERRIDES_JSON = json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in OVERRIDES.items()})
NUM_CLASSES = 10


def small_model(**kwargs):
  from hatnet_jax import models
  return models.create('hatnet_tiny', num_classes=NUM_CLASSES, **OVERRIDES, **kwargs)


def random_variables(model, seed=0):
  variables = model.init(jax.random.key(seed), jnp.zeros((1, 64, 64, 3)), train=False)
  # Scale the head up so that the probabilities are far from uniform (a clearer test of top-k).
  params = jax.tree.map(lambda x: x, variables['params'])
  params['head']['kernel'] = params['head']['kernel'] * 50.0
  return {'params': params}


def save_weights(directory, model, seed=0):
  from hatnet_jax.tools import convert
  variables = random_variables(model, seed)
  convert.save(variables['params'], directory)
  return variables


def china_jpeg(path):
  from PIL import Image
  from sklearn.datasets import load_sample_image
  Image.fromarray(load_sample_image('china.jpg')).save(path, quality=92)
  return path


def china_array():
  from sklearn.datasets import load_sample_image
  return np.asarray(load_sample_image('china.jpg'))
