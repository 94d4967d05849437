"""Official-layout PyTorch weights -> Flax: numerical parity with an independent PyTorch HAT-Net, checks, CLI."""
import argparse

import jax
import numpy as np
import pytest

from tests.references.param_counts import PARAM_COUNTS
from hatnet_jax import models
from hatnet_jax.tools import convert
from hatnet_jax.models.kernels import fused_attention, fused_depthwise, fused_group_norm

torch = pytest.importorskip('torch', reason='torch (CPU build) is needed for the parity tests; '
                                            'pip install -r requirements.txt installs it')
from tests.references import torch_hatnet


def _torch_model(name, seed=0, num_classes=1000, **overrides):
  torch.manual_seed(seed)
  net = torch_hatnet.HATNet(models.get_variant(name, **overrides), num_classes=num_classes)
  return torch_hatnet.randomize_norms(net, seed).eval()


def _run_both(net, params, model, x_nchw):
  with torch.no_grad():
    ref = net(torch.from_numpy(x_nchw)).numpy()
    ref_feats = [f.numpy().transpose(0, 2, 3, 1) for f in net.features(torch.from_numpy(x_nchw))]
  x = x_nchw.transpose(0, 2, 3, 1)
  out, feats = jax.jit(lambda p: (model.apply({'params': p}, x, train=False),
                                  model.apply({'params': p}, x, train=False, method=model.features)))(params)
  return ref, np.asarray(out), ref_feats, [np.asarray(f) for f in feats]


@pytest.mark.parametrize('name', [n if n == 'hatnet_tiny' else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(PARAM_COUNTS)])
def test_logits_match_pytorch_at_224(name):
  net = _torch_model(name)
  params = convert.from_pytorch(net.state_dict(), name)
  x = np.random.RandomState(0).randn(1, 3, 224, 224).astype(np.float32)
  # unroll=6: the trainer's default (configs/default.py); the scanned stages are checked below. On one CPU
  # device the defaults take the native kernels (depthwise, attention, GroupNorm); this process has 8, so
  # ask for them here (the other tests take XLA's paths).
  impl = 'native' if fused_depthwise.available() else 'auto'
  attention = 'native' if fused_attention.available() else ''
  norm = 'native' if fused_group_norm.available() else 'auto'
  model = models.create(name, unroll=6, depthwise_impl=impl, attention_impl=attention, norm_impl=norm)
  ref, out, ref_feats, feats = _run_both(net, params, model, x)
  assert np.abs(ref).max() > 0.1  # the comparison is not between two near-zero outputs
  np.testing.assert_array_less(np.abs(out - ref).max(), 1e-4)
  for a, b in zip(feats, ref_feats):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


# Partial windows at 100 px (stages 1-2) and 200 px (stages 1-3), on XLA's masked path and in the native kernels.
@pytest.mark.parametrize('size,kernels', [(100, 'xla'), (200, 'native')])
def test_non_divisible_sizes_match_pytorch_reference(size, kernels):
  """The padding/masking semantics agree with the PyTorch reference's (written separately)."""
  impls = dict(attention_impl='xla', depthwise_impl='shift', norm_impl='xla')
  if kernels == 'native':
    if not (fused_attention.available() and fused_depthwise.available() and fused_group_norm.available()):
      pytest.skip(f'native kernels unavailable: {fused_attention.unavailable_reason()}')
    impls = dict(attention_impl='native', depthwise_impl='native', norm_impl='native')
  net = _torch_model('hatnet_tiny', num_classes=10)
  params = convert.from_pytorch(net.state_dict(), 'hatnet_tiny')
  x = np.random.RandomState(1).randn(2, 3, size, size).astype(np.float32)
  ref, out, _, _ = _run_both(net, params, models.create('hatnet_tiny', num_classes=10, **impls), x)
  np.testing.assert_array_less(np.abs(out - ref).max(), 1e-4)


MICRO = dict(dims=(16, 32, 48, 64), head_dim=16, depths=(1, 1, 2, 1))


def test_wrapped_file_with_args_loads_safely_and_proj_norm_is_ignored(tmp_path):
  net = _torch_model('hatnet_tiny', num_classes=10, **MICRO)
  sd = net.state_dict()
  assert any('proj_norm' in k for k in sd)
  path = tmp_path / 'ckpt.pth'
  # A DeiT-style training checkpoint, DataParallel prefixes and all.
  torch.save({'model': {'module.' + k: v for k, v in sd.items()}, 'epoch': 299,
              'args': argparse.Namespace(model='HAT_Net_tiny')}, path)
  params = convert.from_pytorch(str(path), 'hatnet_tiny', **MICRO)
  plain = convert.from_pytorch({k: v for k, v in sd.items() if 'proj_norm' not in k}, 'hatnet_tiny', **MICRO)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(plain)):
    np.testing.assert_array_equal(a, b)
  assert params['head']['kernel'].shape == (64, 10)
  np.testing.assert_array_equal(params['stage3']['blocks']['attn']['qkv']['kernel'][1],
                                sd['blocks.2.1.attn.qkv.weight'][:, :, 0, 0].numpy().T)


def test_mismatches_are_named():
  sd = {k: v.numpy() for k, v in _torch_model('hatnet_tiny', num_classes=10, **MICRO).state_dict().items()}
  broken = dict(sd)
  del broken['blocks.1.0.attn.kv.weight']
  broken['blocks.0.0.attn.extra.weight'] = np.zeros(3)
  broken['ds3.conv.weight'] = np.zeros((48, 16, 3, 3), np.float32)
  with pytest.raises(ValueError) as err:
    convert.from_pytorch(broken, 'hatnet_tiny', **MICRO)
  msg = str(err.value)
  assert 'blocks.1.0.attn.kv.weight' in msg and 'blocks.0.0.attn.extra.weight' in msg and 'ds3.conv.weight' in msg
  with pytest.raises(ValueError, match='unknown model'):
    convert.from_pytorch(sd, 'hatnet_huge')
  with pytest.raises(ValueError, match='missing keys'):  # the small model's weights are not hatnet_tiny's
    convert.from_pytorch(sd, 'hatnet_small')


def test_command_line_writes_a_restorable_orbax_checkpoint(tmp_path, capsys):
  import orbax.checkpoint as ocp
  net = _torch_model('hatnet_tiny', num_classes=10)
  torch.save(net.state_dict(), tmp_path / 'HAT-Net_Tiny.pth')
  out = tmp_path / 'converted'
  convert.main(['--model=hatnet_tiny', f'--input={tmp_path / "HAT-Net_Tiny.pth"}', f'--output={out}'])
  assert f'{12_650_152 - 1000 * 385 + 10 * 385:,} parameters' in capsys.readouterr().out
  restored = ocp.StandardCheckpointer().restore(str(out))
  expected = convert.from_pytorch(net.state_dict(), 'hatnet_tiny')
  for a, b in zip(jax.tree.leaves(restored['params']), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(SystemExit):  # refuses to overwrite
    convert.main(['--model=hatnet_tiny', f'--input={tmp_path / "HAT-Net_Tiny.pth"}', f'--output={out}'])


def test_every_converter_failure_names_the_file_and_the_fix(tmp_path, capsys):
  """Bad inputs end in one 'Error: ...' paragraph (exit 1), never torch's weights_only=False advice, and
  leave no output directory behind."""
  tiny = tmp_path / 'tiny.pth'
  torch.save(_torch_model('hatnet_tiny').state_dict(), tiny)
  data = tiny.read_bytes()
  cases = {
      'text.pth': (b'hello, not weights\n', 'is not a PyTorch checkpoint'),
      'random.pth': (np.random.default_rng(0).bytes(2000), 'is not a PyTorch checkpoint'),
      'truncated.pth': (data[:len(data) // 2], 'is a damaged or truncated PyTorch checkpoint'),
  }
  for name, (content, message) in cases.items():
    (tmp_path / name).write_bytes(content)
    out = tmp_path / f'out_{name}'
    assert convert.main(['--model=hatnet_tiny', f'--input={tmp_path / name}', f'--output={out}']) == 1
    err = capsys.readouterr().err
    assert err.startswith(f'Error: {tmp_path / name} {message}') and 'weights_only' not in err, err
    assert not out.exists()
  # Official tiny weights converted as small: the mismatches, and which variant they fit.
  assert convert.main(['--model=hatnet_small', f'--input={tiny}', f'--output={tmp_path / "out_small"}']) == 1
  err = capsys.readouterr().err
  assert 'checkpoint does not match hatnet_small' in err and 'more mismatches' in err
  assert err.strip().endswith('The shapes fit hatnet_tiny: use --model=hatnet_tiny.')
  assert len(err.splitlines()) < 20 and not (tmp_path / 'out_small').exists()
  assert convert.main(['--model=hatnet_tiny', f'--input={tmp_path / "missing.pth"}', f'--output={tmp_path / "o"}']) == 1
  assert 'missing.pth does not exist' in capsys.readouterr().err
