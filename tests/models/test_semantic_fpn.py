"""HAT-Net + Semantic FPN: names, shapes, pinned parameter counts, parity with an independent PyTorch
mmseg-style model loaded through convert.from_mmseg, conversion errors, BatchNorm modes, exact resizes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.references.param_counts import PARAM_COUNTS
from hatnet_jax import models
from hatnet_jax.tools import convert
from hatnet_jax.models import resize

torch = pytest.importorskip('torch', reason='torch (CPU build) is needed for the parity tests')
from tests.references import torch_semfpn

# A narrow, shallow backbone (all four stage kinds) keeps CPU compiles short; neck and head are full width.
MICRO = dict(dims=(16, 32, 48, 64), head_dim=16, depths=(1, 1, 2, 1))

# Trainable parameters of the FPN neck + FPNHead at 150 classes, and of the whole model (tests/references/torch_semfpn.py's
# model, less the backbone's unused proj_norm GroupNorms, has the same counts).
NECK_HEAD_COUNTS = {
    'hatnet_tiny': 4_201_110,
    'hatnet_small': 4_266_646,
    'hatnet_medium': 4_266_646,
    'hatnet_large': 4_299_414,
}
FULL_COUNTS = {
    'hatnet_tiny': 16_466_262,
    'hatnet_small': 29_492_214,
    'hatnet_medium': 46_679_606,
    'hatnet_large': 66_767_350,
}


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_names_and_dispatch():
  assert models.names() == sorted([f'{p}hatnet_{v}' for p in ('', 'maskrcnn_', 'retinanet_', 'semfpn_')
                                   for v in ('tiny', 'small', 'medium', 'large')])
  assert isinstance(models.create('semfpn_hatnet_tiny', num_classes=150), models.SemanticFPN)
  assert type(models.create('hatnet_tiny')) is models.HATNet
  assert models.create('hatnet_tiny').head_drop_rate == 0.2  # family defaults kept
  assert models.create('semfpn_hatnet_tiny').head_drop_rate == 0.1
  seg = models.create('semfpn_hatnet_small', num_classes=19, drop_path_rate=0.2, dtype='bfloat16', **MICRO)
  assert (seg.num_classes, seg.drop_path_rate, seg.dtype, seg.variant.dims) == (19, 0.2, jnp.bfloat16, MICRO['dims'])
  for bad in ('semfpn_hatnet_huge', 'semfpn_tiny', 'fpn_hatnet_tiny'):
    with pytest.raises(ValueError, match='unknown model .*semfpn_hatnet_tiny'):
      models.create(bad)


@pytest.mark.parametrize('name', sorted(NECK_HEAD_COUNTS))
def test_parameter_counts_and_backbone_tree(name):
  seg = models.create('semfpn_' + name, num_classes=150)
  v = jax.eval_shape(lambda: seg.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
  assert sorted(v) == ['batch_stats', 'params']
  p = v['params']
  assert sorted(p) == ['backbone', 'decode_head', 'neck']
  assert _count(p['neck']) + _count(p['decode_head']) == NECK_HEAD_COUNTS[name]
  assert _count(p) == FULL_COUNTS[name]
  # The backbone is exactly a 1000-class classifier less its head (so ImageNet weights load as they are).
  assert _count(p['backbone']) == PARAM_COUNTS[name] - (models.VARIANTS[name].dims[-1] + 1) * 1000
  cls = models.create(name)
  cp = jax.eval_shape(lambda: cls.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))['params']
  back = models.backbone_params_from_classifier(cp)
  assert jax.tree.structure(back) == jax.tree.structure(p['backbone'])
  assert jax.tree.map(lambda a: a.shape, back) == jax.tree.map(lambda a: a.shape, p['backbone'])
  # batch_stats: mean and var of the 7 scale-head BNs (1, 1, 2, 3 ConvModules per level), 128 channels.
  assert _count(v['batch_stats']) == 7 * 2 * 128


def test_backbone_params_from_classifier_is_pure_and_checks():
  params = {'stem_conv1': {'kernel': np.ones(2)}, 'stage1': {}, 'head': {'kernel': np.ones(3)}}
  back = models.backbone_params_from_classifier(params)
  assert sorted(back) == ['stage1', 'stem_conv1'] and 'head' in params and back['stem_conv1'] is params['stem_conv1']
  with pytest.raises(ValueError, match='HAT-Net classifier'):
    models.backbone_params_from_classifier({'params': params})
  with pytest.raises(ValueError, match='HAT-Net classifier'):
    models.backbone_params_from_classifier({'backbone': {}, 'stem_conv1': {}})


@pytest.mark.parametrize('hw', [(512, 512), (100, 140)])
def test_shapes_of_maps_logits_and_output(hw):
  """Real tiny, shapes only: FPN maps at ceil(H / stride), head logits at level 0, output at the input size."""
  seg = models.create('semfpn_hatnet_tiny', num_classes=150)
  x = jnp.zeros((2, *hw, 3))
  v = jax.eval_shape(lambda: seg.init(jax.random.key(0), x, train=False))
  maps = jax.eval_shape(lambda v: seg.apply(v, x, method=seg.features), v)
  sizes = [(-(-hw[0] // s), -(-hw[1] // s)) for s in (4, 8, 16, 32)]
  assert [m.shape for m in maps] == [(2, h, w, 256) for h, w in sizes]
  head = jax.eval_shape(lambda v, m: seg.apply(v, m, False, method=lambda mod, m, t: mod.decode_head(m, t)), v, maps)
  assert head.shape == (2, *sizes[0], 150)
  out = jax.eval_shape(lambda v: seg.apply(v, x, train=False), v)
  assert out.shape == (2, *hw, 150) and out.dtype == jnp.float32


def _torch_model(seed=0, num_classes=150, **overrides):
  torch.manual_seed(seed)
  net = torch_semfpn.SemanticFPN(models.get_variant('hatnet_tiny', **overrides), num_classes=num_classes)
  return torch_semfpn.randomize_norms(net, seed).eval()


@pytest.fixture(scope='module')
def micro_pair():
  net = _torch_model(**MICRO)
  return net, convert.from_mmseg({'state_dict': net.state_dict(), 'meta': {'CLASSES': ('a',) * 150}},
                                 'semfpn_hatnet_tiny', **MICRO)


@pytest.mark.parametrize('hw', [pytest.param((128, 128), marks=pytest.mark.slow), (100, 140)])
def test_eval_logits_match_pytorch_mmseg_reference(micro_pair, hw):
  net, variables = micro_pair
  x = np.random.RandomState(0).randn(1, 3, *hw).astype(np.float32)
  with torch.no_grad():
    ref = net(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
  seg = models.create('semfpn_hatnet_tiny', num_classes=150, **MICRO)
  out = np.asarray(jax.jit(lambda v, x: seg.apply(v, x, train=False))(variables, x.transpose(0, 2, 3, 1)))
  assert out.shape == (1, *hw, 150)
  assert np.abs(ref).max() > 0.1  # not a comparison of near-zero maps
  diff = np.abs(out - ref).max()
  print(f'max |jax - torch| at {hw}: {diff:.2e} (max |logit| {np.abs(ref).max():.2f})')
  assert diff < 1e-4


def test_from_mmseg_maps_every_kind_of_key(micro_pair):
  net, variables = micro_pair
  sd = net.state_dict()
  p, bs = variables['params'], variables['batch_stats']
  np.testing.assert_array_equal(p['decode_head']['scale_heads_3_2']['conv']['kernel'],
                                sd['decode_head.scale_heads.3.4.conv.weight'].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(bs['decode_head']['scale_heads_2_1']['bn']['var'],
                                sd['decode_head.scale_heads.2.2.bn.running_var'].numpy())
  np.testing.assert_array_equal(p['decode_head']['scale_heads_0_0']['bn']['scale'],
                                sd['decode_head.scale_heads.0.0.bn.weight'].numpy())
  np.testing.assert_array_equal(p['neck']['lateral_convs_2']['bias'], sd['neck.lateral_convs.2.conv.bias'].numpy())
  np.testing.assert_array_equal(p['backbone']['stage3']['blocks']['attn']['qkv']['kernel'][1],
                                sd['backbone.blocks.2.1.attn.qkv.weight'][:, :, 0, 0].numpy().T)
  assert p['decode_head']['conv_seg']['kernel'].shape == (1, 1, 128, 150)
  assert 'head' not in p['backbone']


@pytest.mark.slow  # ~35 s
def test_from_mmseg_lists_all_mismatches(micro_pair):
  net, _ = micro_pair
  sd = {k: v.numpy() for k, v in net.state_dict().items()}
  broken = dict(sd)
  del broken['decode_head.scale_heads.3.2.bn.running_mean']
  del broken['neck.fpn_convs.1.conv.bias']
  broken['auxiliary_head.convs.0.conv.weight'] = np.zeros((3, 3), np.float32)
  broken['decode_head.scale_heads.1.1.bn.num_batches_tracked'] = np.zeros(())  # no BN at an Upsample index
  broken['neck.lateral_convs.0.conv.weight'] = np.zeros((256, 17, 1, 1), np.float32)
  with pytest.raises(ValueError) as err:
    convert.from_mmseg(broken, 'semfpn_hatnet_tiny', **MICRO)
  msg = str(err.value)
  for key in ['decode_head.scale_heads.3.2.bn.running_mean', 'neck.fpn_convs.1.conv.bias',
              'auxiliary_head.convs.0.conv.weight', 'decode_head.scale_heads.1.1.bn.num_batches_tracked',
              'neck.lateral_convs.0.conv.weight']:
    assert key in msg, key
  with pytest.raises(ValueError, match='missing keys'):  # a micro checkpoint is not the real tiny
    convert.from_mmseg(sd, 'semfpn_hatnet_tiny')
  with pytest.raises(ValueError, match='semfpn'):
    convert.from_mmseg(sd, 'hatnet_tiny', **MICRO)
  with pytest.raises(ValueError, match='from_mmseg'):
    convert.from_pytorch(sd, 'semfpn_hatnet_tiny', **MICRO)
  assert convert.from_mmseg(sd, 'semfpn_hatnet_tiny', num_classes=150, **MICRO)['params']['neck']


@pytest.mark.slow
def test_command_line_segmentation_writes_params_and_batch_stats(micro_pair, tmp_path, monkeypatch, capsys):
  import orbax.checkpoint as ocp
  net, expected = micro_pair
  torch.save({'state_dict': net.state_dict(), 'meta': {'iter': 160000}}, tmp_path / 'fpn.pth')
  # The CLI takes no overrides: build the micro variant through a patched table row.
  monkeypatch.setitem(models.VARIANTS, 'hatnet_tiny', models.get_variant('hatnet_tiny', **MICRO))
  out = tmp_path / 'converted'
  with pytest.raises(SystemExit):  # task and model must agree
    convert.main(['--model=semfpn_hatnet_tiny', f'--input={tmp_path / "fpn.pth"}', f'--output={out}'])
  convert.main(['--task=segmentation', '--model=semfpn_hatnet_tiny', f'--input={tmp_path / "fpn.pth"}',
                f'--output={out}'])
  assert 'parameters' in capsys.readouterr().out
  restored = ocp.StandardCheckpointer().restore(str(out))
  assert sorted(restored) == ['batch_stats', 'params']
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_batchnorm_stats_update_in_train_mode_only():
  seg = models.create('semfpn_hatnet_tiny', num_classes=5, **MICRO)
  x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  v = jax.jit(lambda: seg.init(jax.random.key(1), x, train=False))()
  stats = v['batch_stats']
  assert all(np.all(s == (0 if 'mean' in jax.tree_util.keystr(k) else 1))
             for k, s in jax.tree_util.tree_flatten_with_path(stats)[0])
  train = jax.jit(lambda v, x: seg.apply(v, x, train=True, mutable=['batch_stats'],
                                         rngs={'dropout': jax.random.key(2)}))
  out, updates = train(v, x)
  assert out.shape == (2, 64, 64, 5)
  new = updates['batch_stats']['decode_head']['scale_heads_1_0']['bn']
  old = stats['decode_head']['scale_heads_1_0']['bn']
  assert np.abs(new['mean'] - old['mean']).max() > 1e-4 and np.abs(new['var'] - old['var']).max() > 1e-4
  # PyTorch's momentum 0.1: from mean 0, one step gives 0.1 m and a second (same batch) 0.9 * 0.1 m + 0.1 m.
  _, again = train({'params': v['params'], **updates}, x)
  np.testing.assert_allclose(again['batch_stats']['decode_head']['scale_heads_1_0']['bn']['mean'],
                             1.9 * new['mean'], rtol=1e-4, atol=1e-7)
  _, eval_updates = jax.jit(lambda v, x: seg.apply(v, x, train=False, mutable=['batch_stats']))(v, x)
  for a, b in zip(jax.tree.leaves(eval_updates['batch_stats']), jax.tree.leaves(stats)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('src,dst', [((7, 9), (13, 18)), ((13, 18), (25, 35)), ((4, 5), (7, 9)), ((25, 35), (7, 9)),
                                     ((10, 3), (3, 10)), ((8, 8), (16, 16)), ((5, 6), (5, 6))])
def test_resizes_equal_torch_interpolate(src, dst):
  x = np.random.RandomState(0).randn(2, 3, *src).astype(np.float32)
  ref_bi = torch.nn.functional.interpolate(torch.from_numpy(x), size=dst, mode='bilinear', align_corners=False)
  ref_nn = torch.nn.functional.interpolate(torch.from_numpy(x), size=dst, mode='nearest')
  xh = jnp.asarray(x.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(np.asarray(resize.bilinear(xh, dst)), ref_bi.numpy().transpose(0, 2, 3, 1),
                             atol=2e-6, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(resize.nearest(xh, dst)), ref_nn.numpy().transpose(0, 2, 3, 1))


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_norms_and_logits():
  kw = dict(num_classes=5, **MICRO)
  f32, bf16 = (models.create('semfpn_hatnet_tiny', dtype=d, **kw) for d in ('float32', 'bfloat16'))
  x = jax.random.normal(jax.random.key(0), (1, 72, 88, 3))
  v = jax.jit(lambda: f32.init(jax.random.key(1), x, train=False))()
  a, b = (np.asarray(jax.jit(lambda v, x, m=m: m.apply(v, x, train=False))(v, x)) for m in (f32, bf16))
  assert b.dtype == np.float32 and b.shape == (1, 72, 88, 5)
  assert np.abs(a - b).max() < 0.05 * np.abs(a).max()
