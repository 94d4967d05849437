"""Attention maps: the explicit-softmax path equals the fused one; weights, images and the command line."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hatnet_jax.tools import attention_maps as am_tool
from hatnet_jax.visualization import attention as am
from tests.tools import common


@pytest.fixture(scope='module')
def model_and_vars():
  model = common.small_model()
  return model, common.random_variables(model)


def _photo(size):
  from PIL import Image
  img = Image.fromarray(common.china_array()).resize((size, size), Image.BICUBIC)
  return np.asarray(img)


@pytest.mark.slow  # default suite under 15 min on the 2-core EPYC (16:00 there)
@pytest.mark.parametrize('size', [64, 50])  # 50: partial windows and pools (masked path)
def test_explicit_path_matches_fused(model_and_vars, size):
  model, variables = model_and_vars
  x = jnp.asarray((_photo(size) / 255.0 - 0.45) / 0.225, jnp.float32)[None].repeat(2, 0)
  fused = model.apply(variables, x, train=False)
  explicit, state = model.clone(sow_attention=True).apply(variables, x, train=False, mutable=['intermediates'])
  np.testing.assert_allclose(np.asarray(explicit), np.asarray(fused), atol=1e-5, rtol=0)
  assert 'intermediates' not in model.apply(variables, x, train=False, mutable=['intermediates'])[1]
  leaves = jax.tree.leaves(state)
  for w in leaves:  # every row of every attention matrix sums to 1
    np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_attention_maps_shapes(model_and_vars):
  model, variables = model_and_vars
  x = jnp.zeros((2, 64, 64, 3)) + jnp.linspace(-1, 1, 64)[None, :, None, None]
  m = am.attention_maps(model, variables, x, stage=1, block=1)
  assert m['shape'] == (16, 16) and m['grid'] == 8 and m['pooled_shape'] == (2, 2)
  assert m['local'].shape == (2, 1, 4, 64, 64)  # B, heads, windows, G*G, G*G
  assert m['global'].shape == (2, 1, 256, 4)  # B, heads, H*W, Hp*Wp
  loc = am.local_map(m, 0, (9, 3))
  assert loc.shape == (16, 16) and loc[8:16, 0:8].sum() == pytest.approx(1.0, abs=1e-5) and loc[:8].sum() == 0
  m4 = am.attention_maps(model, variables, x, stage=4, block=0)
  assert m4['local'] is None and m4['global'].shape == (2, 4, 4, 4)  # plain MHSA over 2x2 tokens
  with pytest.raises(ValueError, match='blocks 0..0'):
    am.attention_maps(model, variables, x, stage=2, block=1)


def test_attention_images(model_and_vars):
  model, variables = model_and_vars
  mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  x = ((_photo(64) / 255.0 - np.asarray(mean)) / np.asarray(std)).astype(np.float32)[None]
  imgs = am.attention_images(model, variables, x, mean=mean, std=std, stage=1, block=0,
                             points=((0.5, 0.5), (0.2, 0.8)))
  assert imgs.dtype == np.uint8 and imgs.shape == (2, 64, 192, 3)
  assert imgs.std() > 10  # a real picture, not a blank
  # The first panel is the input itself (plus the marker).
  assert np.mean(np.abs(imgs[0, :, :64].astype(int) - _photo(64).astype(int)) > 2) < 0.05


@pytest.mark.slow
def test_command_line(tmp_path, capsys):
  model = common.small_model()
  common.save_weights(str(tmp_path / 'weights'), model)
  photo = common.china_jpeg(str(tmp_path / 'china.jpg'))
  rc = am_tool.main([f'--weights={tmp_path / "weights"}', f'--model_overrides={common.OVERRIDES_JSON}', '--image_size=64',
                f'--image={photo}', f'--output_dir={tmp_path / "out"}', '--points=0.5,0.5;0.1,0.9'])
  assert rc == 0, capsys.readouterr().err
  from PIL import Image
  names = sorted(os.listdir(tmp_path / 'out'))
  assert names == ['panel.png', 'point0_global.png', 'point0_local.png', 'point1_global.png', 'point1_local.png']
  assert Image.open(tmp_path / 'out' / 'panel.png').size == (3 * 64, 2 * 64)
  assert am_tool.main([f'--weights={tmp_path / "weights"}', f'--model_overrides={common.OVERRIDES_JSON}',
                  f'--image={tmp_path / "nope.jpg"}', f'--output_dir={tmp_path / "o2"}']) == 2
  assert 'nope.jpg' in capsys.readouterr().err
