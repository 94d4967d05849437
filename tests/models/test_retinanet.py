"""HAT-Net + RetinaNet: names, pinned parameter counts (equal to mmdet's), output shapes, initialisation, the
configurable FPN against mmdet's FPN in every extra-level mode, and whole-model parity with mmdet 3.3.0's real
RetinaNet on the reference HAT-Net, weights loaded through convert.from_mmdet."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.references.param_counts import PARAM_COUNTS, RETINANET_PARAM_COUNTS
from hatnet_jax import models
from hatnet_jax.models.heads.retina_head import RetinaHead
from hatnet_jax.models.necks.fpn import FPN
from hatnet_jax.models.retinanet import STRIDES
from hatnet_jax.tools import convert

# A narrow, shallow backbone (all four stage kinds) keeps CPU compiles short; neck and head are full width.
MICRO = dict(dims=(16, 32, 48, 64), head_dim=16, depths=(1, 1, 2, 1))
VARIANT_NAMES = sorted(RETINANET_PARAM_COUNTS)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _mmdet():
  """Skips unless torch and mmdet (with what its model modules import) are installed."""
  torch = pytest.importorskip('torch', reason='torch (CPU build) is needed for the mmdet parity tests')
  pytest.importorskip('mmdet', reason='mmdet is needed: pip install --no-deps -r requirements-references.txt')
  from tests.references import mmseg_stub
  mmseg_stub.install()
  pytest.importorskip('mmdet.models', reason='mmdet.models does not import (matplotlib missing?)')
  return torch


def test_names_create_and_fields():
  assert [n for n in models.names() if n.startswith('retinanet_')] == [f'retinanet_{v}' for v in VARIANT_NAMES]
  net = models.create('retinanet_hatnet_small', num_classes=3, neck_channels=64, head_channels=32, num_anchors=3,
                      drop_path_rate=0.1, dtype='bfloat16', **MICRO)
  assert isinstance(net, models.RetinaNet)
  assert (net.num_classes, net.neck_channels, net.head_channels, net.num_anchors, net.drop_path_rate, net.dtype,
          net.variant.dims) == (3, 64, 32, 3, 0.1, jnp.bfloat16, MICRO['dims'])
  assert models.family('retinanet_hatnet_large') == ('hatnet_large', models.RetinaNet)
  assert models.create('retinanet_hatnet_tiny', head_drop_rate=0.0).num_classes == 1000  # no dropout to set
  with pytest.raises(ValueError, match='retinanet_hatnet_tiny has no dropout before its head'):
    models.create('retinanet_hatnet_tiny', head_drop_rate=0.1)
  with pytest.raises(ValueError, match='unknown model .*retinanet_hatnet_tiny'):
    models.create('retinanet_hatnet_huge')
  assert models.create('semfpn_hatnet_tiny').head_drop_rate == 0.1  # the other families are unchanged


@pytest.mark.parametrize('name', VARIANT_NAMES)
def test_parameter_counts_and_tree(name):
  net = models.create('retinanet_' + name, num_classes=80)
  v = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
  assert sorted(v) == ['params']  # GroupNorm backbone, no norm in neck or head: no batch_stats
  p = v['params']
  assert sorted(p) == ['backbone', 'bbox_head', 'neck']
  assert _count(p) == RETINANET_PARAM_COUNTS[name]
  # The backbone is a 1000-class classifier less its head (ImageNet weights load through init_from).
  assert _count(p['backbone']) == PARAM_COUNTS[name] - (models.VARIANTS[name].dims[-1] + 1) * 1000
  assert sorted(p['neck']) == [f'fpn_convs_{i}' for i in range(5)] + [f'lateral_convs_{i}' for i in range(3)]
  dims = models.VARIANTS[name].dims
  assert [p['neck'][f'lateral_convs_{i}']['kernel'].shape for i in range(3)] == [(1, 1, d, 256) for d in dims[1:]]
  assert p['neck']['fpn_convs_3']['kernel'].shape == (3, 3, dims[-1], 256)  # P6 on the last backbone map
  assert p['neck']['fpn_convs_4']['kernel'].shape == (3, 3, 256, 256)
  assert p['bbox_head']['retina_cls']['kernel'].shape == (3, 3, 256, 9 * 80)
  assert p['bbox_head']['retina_reg']['kernel'].shape == (3, 3, 256, 9 * 4)
  # 4 + 4 stacked convs, shared by the 5 levels: the head's size does not depend on the backbone.
  assert _count(p['bbox_head']) == 8 * (9 * 256 * 256 + 256) + 9 * 256 * 9 * 84 + 9 * 84


@pytest.mark.parametrize('hw', [(96, 160), (100, 132), (33, 47)])
def test_output_shapes_any_input_size(hw):
  """Real tiny, shapes only: 5 levels at ceil(H / stride), A*K logits and A*4 deltas, float32 under bfloat16."""
  net = models.create('retinanet_hatnet_tiny', num_classes=80, dtype='bfloat16')
  x = jnp.zeros((2, *hw, 3))
  v = jax.eval_shape(lambda: net.init(jax.random.key(0), x, train=False))
  cls, box = jax.eval_shape(lambda v: net.apply(v, x, train=False), v)
  sizes = [(-(-hw[0] // s), -(-hw[1] // s)) for s in STRIDES]
  assert [c.shape for c in cls] == [(2, h, w, 720) for h, w in sizes]
  assert [b.shape for b in box] == [(2, h, w, 36) for h, w in sizes]
  assert {a.dtype for a in cls + box} == {jnp.dtype(jnp.float32)}
  maps = jax.eval_shape(lambda v: net.apply(v, x, method=net.features), v)
  assert [m.shape for m in maps] == [(2, h, w, 256) for h, w in sizes]


def test_initialisation_as_mmdet():
  """Head: normal(0.01) kernels, zero biases, retina_cls bias -log(99); FPN: xavier-uniform, zero bias.
  Small modules (each random initializer costs seconds of XLA compile on CPU), jitted (one compile)."""
  head = RetinaHead(num_classes=3, num_anchors=2, feat_channels=64, stacked_convs=2)
  p = jax.jit(lambda: head.init(jax.random.key(0), [jnp.zeros((1, 4, 4, 32)), jnp.zeros((1, 2, 2, 32))]))()['params']
  assert sorted(p) == sorted([f'{b}_convs_{i}' for b in ('cls', 'reg') for i in range(2)] + ['retina_cls', 'retina_reg'])
  np.testing.assert_allclose(p['retina_cls']['bias'], np.full(6, -math.log(99.0)), rtol=1e-6)
  assert -4.5952 < float(p['retina_cls']['bias'][0]) < -4.5951
  for name, layer in p.items():
    if name != 'retina_cls':
      assert not np.any(layer['bias']), name
  k = np.ravel(p['cls_convs_1']['kernel'])  # 36,864 draws
  assert abs(k.std() - 0.01) < 3e-4 and abs(k.mean()) < 3e-4
  fpn = FPN(32, start_level=1, num_outs=3, add_extra_convs='on_input')
  feats = [jnp.zeros((1, 16 // 2 ** i, 16 // 2 ** i, c)) for i, c in enumerate((8, 16, 40))]
  q = jax.jit(lambda: fpn.init(jax.random.key(1), feats))()['params']
  assert sorted(q) == ['fpn_convs_0', 'fpn_convs_1', 'fpn_convs_2', 'lateral_convs_0', 'lateral_convs_1']
  for layer in q.values():
    kh, kw, cin, cout = layer['kernel'].shape
    bound = math.sqrt(6 / ((cin + cout) * kh * kw))  # PyTorch's conv fans: channels x receptive field
    assert np.abs(layer['kernel']).max() <= bound and np.abs(layer['kernel']).max() > 0.9 * bound
    assert not np.any(layer['bias'])


@pytest.mark.parametrize('bad,match', [(dict(add_extra_convs='on_inputs'), 'add_extra_convs must be one of'),
                                       (dict(start_level=4), 'start_level=4'),
                                       (dict(num_outs=2, start_level=1), 'num_outs=2 is fewer than the 3')])
def test_fpn_rejects_bad_settings(bad, match):
  feats = [jnp.zeros((1, 8 // 2 ** i, 8 // 2 ** i, 4)) for i in range(4)]
  with pytest.raises(ValueError, match=match):
    FPN(8, **bad).init(jax.random.key(0), feats)


def test_fpn_maxpool_levels_take_every_other_pixel():
  """Hand check of add_extra_convs='' (mmdet's F.max_pool2d(x, 1, stride=2)): P6 is P5[::2, ::2]."""
  feats = [jax.random.normal(jax.random.key(i), (1, s, s + 2, 4)) for i, s in enumerate((13, 7, 4))]
  fpn = FPN(8, num_outs=5)
  shapes = jax.eval_shape(lambda: fpn.init(jax.random.key(0), feats))  # NumPy weights: no RNG to compile
  rng = np.random.RandomState(0)
  variables = jax.tree.map(lambda a: rng.randn(*a.shape).astype(np.float32), shapes)
  outs = jax.jit(fpn.apply)(variables, feats)
  assert [o.shape[1:3] for o in outs] == [(13, 15), (7, 9), (4, 6), (2, 3), (1, 2)]
  np.testing.assert_array_equal(outs[3], outs[2][:, ::2, ::2])
  np.testing.assert_array_equal(outs[4], outs[2][:, ::4, ::4])


# (start_level, num_outs, add_extra_convs, relu_before_extra_convs); None: one output per used input.
FPN_CASES = [(0, None, '', False), (0, 5, '', False), (1, 5, 'on_input', False), (1, 5, 'on_input', True),
             (0, 6, 'on_lateral', True), (1, 5, 'on_output', False), (2, 4, 'on_input', False)]


@pytest.mark.parametrize('start,num_outs,extra,relu', FPN_CASES)
def test_fpn_matches_mmdet_fpn(start, num_outs, extra, relu):
  torch = _mmdet()
  from mmdet.models.necks import FPN as MMDetFPN
  in_channels, channels = [8, 12, 16, 20], 16
  n = num_outs or len(in_channels) - start
  torch.manual_seed(0)
  ref = MMDetFPN(in_channels, channels, n, start_level=start, add_extra_convs=extra or False,
                 relu_before_extra_convs=relu).eval()
  for p in ref.parameters():  # non-zero biases, so that each one is checked
    torch.nn.init.normal_(p, std=0.2)
  # The parameter names are mmdet's ModuleList names with '.' -> '_': the conversion is a rename.
  params = {}
  for key, value in ref.state_dict().items():
    module, index, _, kind = key.split('.')  # e.g. fpn_convs.3.conv.weight
    leaf = value.numpy().transpose(2, 3, 1, 0) if kind == 'weight' else value.numpy()
    params.setdefault(f'{module}_{index}', {})['kernel' if kind == 'weight' else 'bias'] = leaf
  rng = np.random.RandomState(1)
  sizes = [(21, 27), (11, 14), (6, 7), (3, 4)]
  xs = [rng.randn(2, c, h, w).astype(np.float32) for c, (h, w) in zip(in_channels, sizes)]
  with torch.no_grad():
    expected = [o.numpy().transpose(0, 2, 3, 1) for o in ref([torch.from_numpy(x) for x in xs])]
  fpn = FPN(channels, start_level=start, num_outs=num_outs, add_extra_convs=extra, relu_before_extra_convs=relu)
  feats = [x.transpose(0, 2, 3, 1) for x in xs]
  shapes = jax.eval_shape(lambda: fpn.init(jax.random.key(0), feats))['params']
  assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(np.shape, params)
  outs = jax.jit(fpn.apply)({'params': params}, feats)
  assert len(outs) == len(expected) == n
  for a, b in zip(outs, expected):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)
  if extra and n - (len(in_channels) - start) >= 2:  # the test sees the ReLU before the second extra conv
    other = jax.jit(FPN(channels, start_level=start, num_outs=num_outs, add_extra_convs=extra,
                        relu_before_extra_convs=not relu).apply)({'params': params}, feats)
    assert np.abs(np.asarray(other[-1]) - expected[-1]).max() > 1e-2


def test_mmdet_retinanet_config_has_no_relu_before_p7():
  """mmdet's retinanet_r50_fpn.py (which PVT's RetinaNet configs inherit) leaves relu_before_extra_convs unset."""
  _mmdet()
  from tests.references import torch_retinanet
  neck = torch_retinanet.config(models.get_variant('hatnet_tiny', **MICRO)).neck
  assert neck.get('relu_before_extra_convs', False) is False
  assert (neck.start_level, neck.add_extra_convs, neck.num_outs) == (1, 'on_input', 5)


@pytest.fixture(scope='module')
def micro_pair():
  _mmdet()
  from tests.references import torch_retinanet
  ref = torch_retinanet.build(models.get_variant('hatnet_tiny', **MICRO))
  variables = convert.from_mmdet({'state_dict': ref.state_dict(), 'meta': {}}, 'retinanet_hatnet_tiny', **MICRO)
  net = models.create('retinanet_hatnet_tiny', num_classes=80, **MICRO)
  return ref, variables, jax.jit(lambda v, x: net.apply(v, x, train=False))


def _compare(ref, apply, variables, hw, seed=0):
  import torch
  x = np.random.RandomState(seed).randn(1, 3, *hw).astype(np.float32)
  with torch.no_grad():
    cls, box = ref(torch.from_numpy(x), mode='tensor')  # mmdet's _forward: the head's per-level outputs
  out_cls, out_box = apply(variables, x.transpose(0, 2, 3, 1))
  assert len(out_cls) == len(out_box) == 5
  worst = 0.0
  for a, b in zip(list(out_cls) + list(out_box), list(cls) + list(box)):
    b = b.numpy().transpose(0, 2, 3, 1)  # channel a*K + k stays in place
    assert a.shape == b.shape and a.dtype == np.float32
    diff = float(np.abs(np.asarray(a) - b).max())
    # Absolute 1e-4, and relative to each level's size (P6/P7 outputs are small).
    assert diff < 1e-4 and diff < 2e-5 * np.abs(b).max(), (a.shape, diff, np.abs(b).max())
    worst = max(worst, diff)
  assert np.abs(cls[0].numpy()).max() > 0.5  # not a comparison of near-zero maps
  print(f'max |jax - mmdet| at {hw}: {worst:.2e}')


@pytest.mark.parametrize('hw', [(96, 160), (100, 132)])
def test_eval_outputs_match_mmdet_retinanet(micro_pair, hw):
  ref, variables, apply = micro_pair
  _compare(ref, apply, variables, hw)


@pytest.mark.slow  # ~40 s: hatnet_tiny's real widths and depths
def test_eval_outputs_match_mmdet_retinanet_real_tiny():
  _mmdet()
  from tests.references import torch_retinanet
  ref = torch_retinanet.build(models.get_variant('hatnet_tiny'), seed=1)
  variables = convert.from_mmdet(ref.state_dict(), 'retinanet_hatnet_tiny')
  net = models.create('retinanet_hatnet_tiny', num_classes=80)
  _compare(ref, jax.jit(lambda v, x: net.apply(v, x, train=False)), variables, (100, 132), seed=1)


@pytest.mark.slow  # ~30 s: builds the four PyTorch models
@pytest.mark.parametrize('name', VARIANT_NAMES)
def test_parameter_counts_equal_mmdet(name):
  _mmdet()
  from tests.references import torch_retinanet
  assert torch_retinanet.count_params(torch_retinanet.build(models.get_variant(name))) == RETINANET_PARAM_COUNTS[name]


@pytest.mark.slow  # ~70 s on a loaded 2-core CPU: compiles a backward pass
def test_train_step_in_bfloat16_has_finite_gradients_everywhere():
  """train=True with drop path (the trainer's call), bfloat16 compute: float32 outputs, a gradient for every
  parameter (the levels share the head's), and the params stay float32."""
  net = models.create('retinanet_hatnet_tiny', num_classes=4, dtype='bfloat16', drop_path_rate=0.1,
                      neck_channels=32, head_channels=32, **MICRO)
  x = jax.random.normal(jax.random.key(0), (2, 64, 96, 3))
  variables = jax.jit(lambda: net.init(jax.random.key(1), x, train=False))()

  def loss(params):
    (cls, box), state = net.apply({'params': params}, x, train=True, rngs={'dropout': jax.random.key(2)},
                                  mutable=[])
    assert {a.dtype for a in cls + box} == {jnp.dtype(jnp.float32)} and state == {}
    return sum(jnp.mean(jax.nn.sigmoid(c)) + jnp.mean(jnp.abs(b)) for c, b in zip(cls, box))

  grads = jax.jit(jax.grad(loss))(variables['params'])
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert g.dtype == jnp.float32 and np.all(np.isfinite(g)), jax.tree_util.keystr(path)
  assert float(jnp.abs(grads['bbox_head']['retina_cls']['kernel']).max()) > 0
  assert float(jnp.abs(grads['neck']['fpn_convs_4']['kernel']).max()) > 0  # P7 reaches the loss
