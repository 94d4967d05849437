"""mmdet RetinaNet and Mask R-CNN checkpoints -> Flax (convert.from_mmdet, tools/convert_mmdet.py,
--task=detection): exact round trips, the key layouts against mmdet 3.3.0's real RetinaNet and MaskRCNN, the
two transforms beyond a rename (the NCHW-flattened first fc, the transposed conv) by hand, and one clear error
for a checkpoint of another variant or another head.

Most tests build mmdet-layout state dicts from the Flax model through the inverse of the converter's table
(numpy only); the `test_layout_is_mmdet_*` tests tie that table to mmdet's own keys and shapes."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hatnet_jax import models
from hatnet_jax.tools import convert, convert_mmdet

MICRO = dict(dims=(16, 32, 48, 64), head_dim=16, depths=(1, 1, 2, 1))
NAME = 'retinanet_hatnet_tiny'
MASK_NAME = 'maskrcnn_hatnet_tiny'

_INVERSE = {convert._conv: lambda w: np.transpose(w, (3, 2, 0, 1)),  # (kh, kw, I, O) -> (O, I, kh, kw)
            convert._pointwise: lambda w: np.transpose(w)[:, :, None, None],  # Dense (I, O) -> 1x1 conv
            convert._same: lambda w: w,
            convert_mmdet.linear: np.transpose,
            convert_mmdet.deconv: lambda w: np.ascontiguousarray(np.transpose(w[::-1, ::-1], (2, 3, 0, 1)))}


def _inverse(transform):
  if isinstance(transform, functools.partial) and transform.func is convert_mmdet.nchw_flatten_fc:
    c, s = transform.keywords['channels'], transform.keywords['size']  # (S*S*C, O) NHWC -> (O, C*S*S) NCHW
    return lambda w: w.reshape(s, s, c, -1).transpose(3, 2, 0, 1).reshape(w.shape[1], -1)
  return _INVERSE[transform]


class MessageHub:
  """Stands for the objects an mmengine training checkpoint pickles beside its tensors."""

  def __init__(self):
    self.log_scalars = {'loss': [0.5]}


def _random_variables(num_classes=3, seed=0, name=NAME, **overrides):
  """Random float32 variables of `name` (NumPy draws into eval_shape's tree: no init compile)."""
  net = models.create(name, num_classes=num_classes, **overrides)
  shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
  rng = np.random.RandomState(seed)
  return net, jax.tree.map(lambda a: rng.randn(*a.shape).astype(np.float32), shapes)


def _mmdet_state_dict(net, variables) -> dict:
  """The mmdet-layout state dict that converts to `variables` (plus the unused proj_norm the official has)."""
  flat = jax.tree_util.tree_flatten_with_path(variables)[0]
  flat = {tuple(k.key for k in path): v for path, v in flat}
  state = {}
  for key, (collection, path, index, transform) in convert_mmdet.layout(net).items():
    value = flat[(collection,) + path]
    state[key] = _inverse(transform)(value if index is None else value[index])
  for s, depth in enumerate(net.variant.depths):
    for i in range(depth):
      state[f'backbone.blocks.{s}.{i}.attn.proj_norm.weight'] = np.ones(net.variant.dims[s], np.float32)
  return state


def _assert_same(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope='module')
def micro():
  net, variables = _random_variables(**MICRO)
  return net, variables, _mmdet_state_dict(net, variables)


def test_round_trip_and_num_classes_from_retina_cls(micro):
  net, variables, state = micro
  out = convert.from_mmdet({'state_dict': state, 'meta': {'epoch': 12}}, NAME, **MICRO)  # num_classes: 27 / 9
  assert sorted(out) == ['params']
  _assert_same(out, variables)
  # Spot checks, written out by hand: a ConvModule conv, an extra level, a head conv, the scanned backbone.
  p = out['params']
  np.testing.assert_array_equal(p['neck']['fpn_convs_3']['kernel'],
                                state['neck.fpn_convs.3.conv.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(p['bbox_head']['retina_cls']['bias'], state['bbox_head.retina_cls.bias'])
  np.testing.assert_array_equal(p['bbox_head']['reg_convs_2']['kernel'][1, 0, 5, 7],
                                state['bbox_head.reg_convs.2.conv.weight'][7, 5, 1, 0])
  np.testing.assert_array_equal(p['backbone']['stage3']['blocks']['attn']['qkv']['kernel'][1],
                                state['backbone.blocks.2.1.attn.qkv.weight'][:, :, 0, 0].T)
  with pytest.raises(ValueError, match='not a multiple of num_anchors=9'):
    convert.from_mmdet({**state, 'bbox_head.retina_cls.weight': np.zeros((28, 256, 3, 3), np.float32)}, NAME, **MICRO)


def test_other_head_names_the_file_the_model_and_the_heads(micro, tmp_path):
  torch = pytest.importorskip('torch', reason='torch is needed to write a .pth')
  _, _, state = micro
  # A Mask R-CNN-like checkpoint: same backbone and neck, rpn_head / roi_head instead of bbox_head.
  rcnn = {k: v for k, v in state.items() if not k.startswith('bbox_head.')}
  rcnn['rpn_head.rpn_conv.weight'] = np.zeros((256, 256, 3, 3), np.float32)
  rcnn['roi_head.bbox_head.fc_cls.weight'] = np.zeros((81, 1024), np.float32)
  path = tmp_path / 'mask_rcnn.pth'
  torch.save({'state_dict': {k: torch.from_numpy(v) for k, v in rcnn.items()}, 'meta': {}}, path)
  with pytest.raises(ValueError) as err:
    convert.from_mmdet(str(path), NAME, **MICRO)
  msg = str(err.value)
  assert msg.startswith(f'{path}: not an mmdet RetinaNet checkpoint: {NAME} needs bbox_head.retina_cls'), msg
  assert "['roi_head', 'rpn_head']" in msg and 'a Mask R-CNN converts with a maskrcnn_* model' in msg
  with pytest.raises(convert.ConversionError) as err:  # num_classes given: every mismatch, one message
    convert.from_mmdet(str(path), NAME, num_classes=3, **MICRO)
  msg = str(err.value)
  assert msg.startswith(f'{path}: checkpoint does not match {NAME} (num_classes=3)')
  for key in ('bbox_head.retina_cls.weight', 'bbox_head.cls_convs.0.conv.bias', 'roi_head.bbox_head.fc_cls.weight',
              'rpn_head.rpn_conv.weight'):
    assert key in str(err.value.problems), key
  with pytest.raises(ValueError, match=r'from_mmdet converts RetinaNet \(retinanet_\*\) and Mask R-CNN'):
    convert.from_mmdet(state, 'semfpn_hatnet_tiny')
  with pytest.raises(ValueError, match='from_mmdet for retinanet_'):
    convert.from_pytorch(state, NAME)


def test_other_variant_names_the_file_the_model_and_the_variant_that_fits(tmp_path):
  torch = pytest.importorskip('torch', reason='torch is needed to write a .pth')
  net, variables = _random_variables(num_classes=80)  # hatnet_tiny's real widths
  state = _mmdet_state_dict(net, variables)
  path = tmp_path / 'retinanet_tiny.pth'
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
  _assert_same(convert.from_mmdet(path, NAME), variables)
  with pytest.raises(ValueError) as err:
    convert.from_mmdet(path, 'retinanet_hatnet_small')
  msg = str(err.value)
  assert msg.startswith(f'{path}: checkpoint does not match retinanet_hatnet_small (num_classes=80)'), msg
  assert 'more mismatches' in msg and len(msg.splitlines()) < 20
  assert 'neck.lateral_convs.0.conv.weight: shape (256, 96, 1, 1)' in str(err.value.problems)
  assert msg.endswith('The shapes fit retinanet_hatnet_tiny: use --model=retinanet_hatnet_tiny.')


def test_command_line_detection(micro, tmp_path, monkeypatch, capsys):
  torch = pytest.importorskip('torch', reason='torch is needed to write a .pth')
  import orbax.checkpoint as ocp
  _, variables, state = micro
  path = tmp_path / 'retinanet.pth'
  torch.save({'state_dict': {k: torch.from_numpy(v) for k, v in state.items()}, 'meta': {}}, path)
  # The CLI takes no overrides: build the micro variant through a patched table row.
  monkeypatch.setitem(models.VARIANTS, 'hatnet_tiny', models.get_variant('hatnet_tiny', **MICRO))
  out = tmp_path / 'converted'
  for task in ('classification', 'segmentation'):  # task and model must agree
    with pytest.raises(SystemExit):
      convert.main([f'--task={task}', f'--model={NAME}', f'--input={path}', f'--output={out}'])
    assert '--task=detection takes retinanet_*' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    convert.main(['--task=detection', '--model=semfpn_hatnet_tiny', f'--input={path}', f'--output={out}'])
  assert convert.main(['--task=detection', f'--model={NAME}', f'--input={path}', f'--output={out}']) == 0
  assert f'({sum(np.size(x) for x in jax.tree.leaves(variables)):,} parameters)' in capsys.readouterr().out
  restored = ocp.StandardCheckpointer().restore(str(out))
  assert sorted(restored) == ['params']
  _assert_same(restored, variables)
  assert convert.main(['--task=detection', '--model=retinanet_hatnet_small', f'--input={path}',
                       f'--output={tmp_path / "small"}']) == 1
  assert capsys.readouterr().err.startswith(f'Error: {path}: checkpoint does not match retinanet_hatnet_small')
  assert not (tmp_path / 'small').exists()
  # An mmengine training checkpoint pickles objects beside the tensors: refused, never unpickled, with the fix.
  torch.save({'state_dict': {}, 'message_hub': MessageHub()}, tmp_path / 'epoch_12.pth')
  assert convert.main(['--task=detection', f'--model={NAME}', f'--input={tmp_path / "epoch_12.pth"}',
                       f'--output={tmp_path / "o"}']) == 1
  err = capsys.readouterr().err
  assert err.startswith(f'Error: {tmp_path / "epoch_12.pth"} is a pickle that holds objects other than tensors')
  assert "torch.save({'state_dict': ckpt['state_dict']}, ...)" in err and 'weights_only' not in err


def test_layout_is_mmdet_retinanet_state_dict():
  """The converter's keys and shapes are exactly mmdet 3.3.0's RetinaNet's (less the unused proj_norm), and a
  real mmdet state dict converts onto the Flax tree with every array in place."""
  torch = pytest.importorskip('torch', reason='torch (CPU build) is needed for the mmdet tests')
  pytest.importorskip('mmdet', reason='mmdet is needed: pip install --no-deps -r requirements-references.txt')
  from tests.references import mmseg_stub, torch_retinanet
  mmseg_stub.install()
  pytest.importorskip('mmdet.models', reason='mmdet.models does not import (matplotlib missing?)')
  ref = torch_retinanet.build(models.get_variant('hatnet_tiny', **MICRO), num_classes=5)
  real = {k: tuple(v.shape) for k, v in ref.state_dict().items() if '.attn.proj_norm.' not in k}
  net, variables = _random_variables(num_classes=5, **MICRO)
  mine = {k: v.shape for k, v in _mmdet_state_dict(net, variables).items() if '.attn.proj_norm.' not in k}
  assert mine == real
  out = convert.from_mmdet({'state_dict': ref.state_dict()}, NAME, **MICRO)
  assert convert_mmdet.layout(net).keys() == real.keys()
  _assert_same(jax.tree.map(np.shape, out), jax.tree.map(np.shape, variables))
  back = _mmdet_state_dict(net, out)
  for k, v in ref.state_dict().items():
    if '.attn.proj_norm.' not in k:
      np.testing.assert_array_equal(back[k], v.numpy(), err_msg=k)
  del torch


# Mask R-CNN: the same machinery, its own layout and two transforms beyond a rename.

@pytest.fixture(scope='module')
def mask_micro():
  net, variables = _random_variables(num_classes=3, name=MASK_NAME, **MICRO)
  return net, variables, _mmdet_state_dict(net, variables)


def test_mask_rcnn_round_trip_and_num_classes_from_fc_cls(mask_micro):
  net, variables, state = mask_micro
  out = convert.from_mmdet({'state_dict': state, 'meta': {}}, MASK_NAME, **MICRO)  # num_classes: 4 - background
  _assert_same(out, variables)
  p = out['params']
  # Spot checks by hand: an RPN conv, the NCHW-flattened first fc, the flipped transposed conv, fc_reg.
  np.testing.assert_array_equal(p['rpn_head']['rpn_cls']['kernel'][0, 0, 17, 2],
                                state['rpn_head.rpn_cls.weight'][2, 17, 0, 0])
  fc0 = state['roi_head.bbox_head.shared_fcs.0.weight']  # (1024, 256 * 7 * 7), input index c * 49 + h * 7 + w
  for h, w, c, o in [(0, 0, 0, 0), (2, 5, 200, 1000), (6, 6, 255, 3), (3, 1, 17, 511)]:
    assert p['roi_head']['bbox_head']['shared_fcs_0']['kernel'][(h * 7 + w) * 256 + c, o] == fc0[o, c * 49 + h * 7 + w]
  up = state['roi_head.mask_head.upsample.weight']  # (in, out, 2, 2)
  for a, b, i, o in [(0, 0, 3, 4), (0, 1, 100, 7), (1, 0, 255, 0), (1, 1, 9, 250)]:
    assert p['roi_head']['mask_head']['upsample']['kernel'][a, b, i, o] == up[i, o, 1 - a, 1 - b]
  np.testing.assert_array_equal(p['roi_head']['bbox_head']['fc_reg']['kernel'],
                                state['roi_head.bbox_head.fc_reg.weight'].T)
  with pytest.raises(ValueError, match='fc_cls has 1 outputs; maskrcnn_hatnet_tiny needs num_classes'):
    convert.from_mmdet({**state, 'roi_head.bbox_head.fc_cls.weight': np.zeros((1, 1024), np.float32)},
                       MASK_NAME, **MICRO)


def test_mask_rcnn_transforms_compute_what_torch_computes():
  """The two non-trivial transforms, checked on activations: torch's Linear on an NCHW flatten equals flax's
  Dense on the NHWC flatten of the same RoI; torch's ConvTranspose2d(k=2, s=2) equals flax's ConvTranspose."""
  torch = pytest.importorskip('torch')
  from flax import linen as nn
  rng = np.random.RandomState(0)
  c, s, o = 5, 3, 4
  w = rng.randn(o, c * s * s).astype(np.float32)
  x = rng.randn(2, c, s, s).astype(np.float32)
  kernel = convert_mmdet.nchw_flatten_fc(w, channels=c, size=s)
  np.testing.assert_allclose(x.transpose(0, 2, 3, 1).reshape(2, -1) @ kernel, x.reshape(2, -1) @ w.T, rtol=1e-5)
  assert convert_mmdet.nchw_flatten_fc(w, channels=c + 1, size=s).shape == (c * s * s, o)  # left for the check
  deconv = torch.nn.ConvTranspose2d(c, o, 2, stride=2)
  x = rng.randn(2, c, 4, 3).astype(np.float32)
  with torch.no_grad():
    expected = deconv(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
  params = {'kernel': convert_mmdet.deconv(deconv.weight.detach().numpy()), 'bias': deconv.bias.detach().numpy()}
  got = nn.ConvTranspose(o, (2, 2), strides=(2, 2), padding='VALID').apply({'params': params}, x.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  unflipped = {**params, 'kernel': np.transpose(deconv.weight.detach().numpy(), (2, 3, 0, 1))}
  wrong = nn.ConvTranspose(o, (2, 2), strides=(2, 2), padding='VALID').apply({'params': unflipped},
                                                                             x.transpose(0, 2, 3, 1))
  assert np.abs(np.asarray(wrong) - expected).max() > 0.1  # the flip matters


def test_mask_rcnn_other_head_or_detector_names_what_fits(mask_micro, micro, tmp_path):
  torch = pytest.importorskip('torch', reason='torch is needed to write a .pth')
  _, _, retina_state = micro
  path = tmp_path / 'retinanet.pth'
  torch.save({'state_dict': {k: torch.from_numpy(v) for k, v in retina_state.items()}}, path)
  with pytest.raises(ValueError) as err:
    convert.from_mmdet(str(path), MASK_NAME, **MICRO)
  msg = str(err.value)
  assert msg.startswith(f'{path}: not an mmdet Mask R-CNN checkpoint: {MASK_NAME} needs rpn_head and roi_head'), msg
  assert "heads found: ['bbox_head']" in msg and 'retinanet_* model' in msg
  # A Faster R-CNN checkpoint (no mask head): every missing mask-head key in one message.
  _, _, state = mask_micro
  faster = {k: v for k, v in state.items() if not k.startswith('roi_head.mask_head.')}
  with pytest.raises(convert.ConversionError) as err:
    convert.from_mmdet(faster, MASK_NAME, **MICRO)
  assert str(err.value).startswith(f'checkpoint does not match {MASK_NAME} (num_classes=3)')
  assert 'roi_head.mask_head.upsample.weight' in str(err.value.problems)
  assert 'roi_head.mask_head.conv_logits.bias' in str(err.value.problems)


def test_mask_rcnn_other_variant_names_the_variant_that_fits():
  net, variables = _random_variables(num_classes=80, name=MASK_NAME)  # hatnet_tiny's real widths
  state = _mmdet_state_dict(net, variables)
  with pytest.raises(convert.ConversionError) as err:
    convert.from_mmdet(state, 'maskrcnn_hatnet_small')
  msg = str(err.value)
  assert msg.startswith('checkpoint does not match maskrcnn_hatnet_small (num_classes=80)'), msg
  assert msg.endswith(f'The shapes fit {MASK_NAME}: use --model={MASK_NAME}.')


def test_command_line_detection_mask_rcnn(mask_micro, tmp_path, monkeypatch, capsys):
  torch = pytest.importorskip('torch', reason='torch is needed to write a .pth')
  import orbax.checkpoint as ocp
  _, variables, state = mask_micro
  path = tmp_path / 'mask_rcnn.pth'
  torch.save({'state_dict': {k: torch.from_numpy(v) for k, v in state.items()}, 'meta': {}}, path)
  monkeypatch.setitem(models.VARIANTS, 'hatnet_tiny', models.get_variant('hatnet_tiny', **MICRO))
  out = tmp_path / 'converted'
  with pytest.raises(SystemExit):
    convert.main(['--task=segmentation', f'--model={MASK_NAME}', f'--input={path}', f'--output={out}'])
  assert '--task=detection takes retinanet_* or maskrcnn_*' in capsys.readouterr().err
  assert convert.main(['--task=detection', f'--model={MASK_NAME}', f'--input={path}', f'--output={out}']) == 0
  assert f'({sum(np.size(x) for x in jax.tree.leaves(variables)):,} parameters)' in capsys.readouterr().out
  _assert_same(ocp.StandardCheckpointer().restore(str(out)), variables)
  assert convert.main(['--task=detection', f'--model={NAME}', f'--input={path}', f'--output={tmp_path / "r"}']) == 1
  assert 'not an mmdet RetinaNet checkpoint' in capsys.readouterr().err


def test_layout_is_mmdet_mask_rcnn_state_dict():
  """The converter's keys and shapes are exactly mmdet 3.3.0's MaskRCNN's (less the unused proj_norm), and a
  real mmdet state dict converts onto the Flax tree and back with every array in place."""
  pytest.importorskip('torch', reason='torch (CPU build) is needed for the mmdet tests')
  pytest.importorskip('mmdet', reason='mmdet is needed: pip install --no-deps -r requirements-references.txt')
  from tests.references import mmseg_stub, torch_maskrcnn
  mmseg_stub.install()
  pytest.importorskip('mmdet.models', reason='mmdet.models does not import (matplotlib missing?)')
  ref = torch_maskrcnn.build(models.get_variant('hatnet_tiny', **MICRO), num_classes=5)
  real = {k: tuple(v.shape) for k, v in ref.state_dict().items() if '.attn.proj_norm.' not in k}
  net, variables = _random_variables(num_classes=5, name=MASK_NAME, **MICRO)
  mine = {k: v.shape for k, v in _mmdet_state_dict(net, variables).items() if '.attn.proj_norm.' not in k}
  assert mine == real
  assert convert_mmdet.layout(net).keys() == real.keys()
  out = convert.from_mmdet({'state_dict': ref.state_dict()}, MASK_NAME, **MICRO)
  _assert_same(jax.tree.map(np.shape, out), jax.tree.map(np.shape, variables))
  back = _mmdet_state_dict(net, out)
  for k, v in ref.state_dict().items():
    if '.attn.proj_norm.' not in k:
      np.testing.assert_array_equal(back[k], v.numpy(), err_msg=k)
