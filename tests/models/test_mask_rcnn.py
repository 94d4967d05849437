"""HAT-Net + Mask R-CNN (the network): names, pinned parameter counts (equal to mmdet's), output shapes, the
heads' initialisation against hand values and mmdet's init_weights, the reference's torch RoIAlign on hand
cases, and parity with mmdet 3.3.0's real MaskRCNN on the reference HAT-Net (weights through
convert.from_mmdet): FPN maps, RPN outputs, and the box and mask heads on fixed RoIs pooled by the reference's
RoIAlign (and by hatnet_jax.structures.roi_align where it exists)."""
import functools
import importlib.util
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.references.param_counts import MASK_RCNN_PARAM_COUNTS, PARAM_COUNTS
from hatnet_jax import models
from hatnet_jax.models.heads.roi_heads import BBoxHead, MaskHead
from hatnet_jax.models.heads.rpn_head import RPNHead
from hatnet_jax.models.mask_rcnn import STRIDES
from hatnet_jax.tools import convert

# A narrow, shallow backbone (all four stage kinds) keeps CPU compiles short; neck and heads are full width.
MICRO = dict(dims=(16, 32, 48, 64), head_dim=16, depths=(1, 1, 2, 1))
VARIANT_NAMES = sorted(MASK_RCNN_PARAM_COUNTS)
NAME = 'maskrcnn_hatnet_tiny'
# Fixed RoIs (batch index, x1, y1, x2, y2 in input pixels): every pooling level (areas around 56 ... 448 px
# sides), fractional corners, one past the image's edge, one degenerate (zero width).
ROIS = np.array([[0, 3.3, 4.1, 40.7, 31.2], [0, 10.0, 12.5, 121.0, 90.0], [0, 0.0, 0.0, 5.0, 7.0],
                 [1, 20.2, 8.8, 70.4, 95.1], [1, 60.0, 40.0, 200.0, 130.0], [1, 30.0, 30.0, 30.0, 50.0],
                 [0, 2.0, 1.0, 127.0, 95.0], [1, 100.5, 3.25, 159.75, 60.5]], np.float32)


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
  assert [n for n in models.names() if n.startswith('maskrcnn_')] == [f'maskrcnn_{v}' for v in VARIANT_NAMES]
  net = models.create('maskrcnn_hatnet_small', num_classes=3, neck_channels=64, rpn_channels=32, num_anchors=5,
                      fc_channels=128, mask_channels=16, drop_path_rate=0.1, dtype='bfloat16', **MICRO)
  assert isinstance(net, models.MaskRCNN)
  assert (net.num_classes, net.neck_channels, net.rpn_channels, net.num_anchors, net.fc_channels, net.mask_channels,
          net.drop_path_rate, net.dtype, net.variant.dims) == (3, 64, 32, 5, 128, 16, 0.1, jnp.bfloat16, MICRO['dims'])
  assert models.family('maskrcnn_hatnet_large') == ('hatnet_large', models.MaskRCNN)
  with pytest.raises(ValueError, match='maskrcnn_hatnet_tiny has no dropout before its head'):
    models.create(NAME, head_drop_rate=0.1)
  with pytest.raises(ValueError, match='unknown model .*maskrcnn_hatnet_tiny'):
    models.create('maskrcnn_hatnet_huge')


@pytest.mark.parametrize('name', VARIANT_NAMES)
def test_parameter_counts_and_tree(name):
  net = models.create('maskrcnn_' + name, num_classes=80)
  v = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
  assert sorted(v) == ['params']  # GroupNorm backbone, no norm in neck or heads: no batch_stats
  p = v['params']
  assert sorted(p) == ['backbone', 'neck', 'roi_head', 'rpn_head']
  assert _count(p) == MASK_RCNN_PARAM_COUNTS[name]
  assert _count(p['backbone']) == PARAM_COUNTS[name] - (models.VARIANTS[name].dims[-1] + 1) * 1000
  dims = models.VARIANTS[name].dims
  assert sorted(p['neck']) == [f'fpn_convs_{i}' for i in range(4)] + [f'lateral_convs_{i}' for i in range(4)]
  assert [p['neck'][f'lateral_convs_{i}']['kernel'].shape for i in range(4)] == [(1, 1, d, 256) for d in dims]
  # Heads, written out by hand: their sizes do not depend on the backbone.
  assert _count(p['rpn_head']) == (9 * 256 * 256 + 256) + (256 * 3 + 3) + (256 * 12 + 12)
  box = p['roi_head']['bbox_head']
  assert box['shared_fcs_0']['kernel'].shape == (7 * 7 * 256, 1024)
  assert _count(box) == (12544 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 81 + 81) + (1024 * 320 + 320)
  mask = p['roi_head']['mask_head']
  assert mask['upsample']['kernel'].shape == (2, 2, 256, 256)
  assert _count(mask) == 4 * (9 * 256 * 256 + 256) + (4 * 256 * 256 + 256) + (256 * 80 + 80)


@pytest.mark.parametrize('hw', [(96, 160), (100, 132)])
def test_output_shapes_any_input_size(hw):
  """Real tiny, shapes only: 5 levels at ceil(H / stride), A and A*4 RPN channels, the heads on RoIs; float32
  outputs under bfloat16; a wrong pooled shape is refused by name."""
  net = models.create(NAME, num_classes=80, dtype='bfloat16')
  x = jnp.zeros((2, *hw, 3))
  v = jax.eval_shape(lambda: net.init(jax.random.key(0), x, train=False))
  (obj, deltas), (cls, box), mask = jax.eval_shape(lambda v: net.apply(v, x, train=False), v)
  sizes = [(-(-hw[0] // s), -(-hw[1] // s)) for s in STRIDES]
  assert [o.shape for o in obj] == [(2, h, w, 3) for h, w in sizes]
  assert [d.shape for d in deltas] == [(2, h, w, 12) for h, w in sizes]
  assert (cls.shape, box.shape, mask.shape) == ((1, 81), (1, 320), (1, 28, 28, 80))
  assert {a.dtype for a in obj + deltas + [cls, box, mask]} == {jnp.dtype(jnp.float32)}
  maps = jax.eval_shape(lambda v: net.apply(v, x, method=net.features), v)
  assert [m.shape for m in maps] == [(2, h, w, 256) for h, w in sizes]
  cls, box = jax.eval_shape(lambda v: net.apply(v, jnp.zeros((9, 7, 7, 256)), method=net.box_head), v)
  mask = jax.eval_shape(lambda v: net.apply(v, jnp.zeros((5, 14, 14, 256)), method=net.mask_head), v)
  assert (cls.shape, box.shape, mask.shape) == ((9, 81), (9, 320), (5, 28, 28, 80))
  with pytest.raises(ValueError, match=r'mask_head takes pooled RoI features \[R, 14, 14, 256\].*\(5, 7, 7, 256\)'):
    jax.eval_shape(lambda v: net.apply(v, jnp.zeros((5, 7, 7, 256)), method=net.mask_head), v)


@pytest.fixture(scope='module')
def small_heads():
  """Our three heads at small widths, initialised (jitted: one compile; 'rbg' keys compile in a third of
  threefry's time), and the widths."""
  c, fc, k, a = 32, 64, 3, 3
  rpn = RPNHead(num_anchors=a, feat_channels=c)
  box = BBoxHead(num_classes=k, fc_channels=fc)
  mask = MaskHead(num_classes=k, channels=c)
  key = lambda i: jax.random.key(i, impl='rbg')

  def init():
    return (rpn.init(key(0), [jnp.zeros((1, 4, 4, c))])['params'],
            box.init(key(1), jnp.zeros((1, 7, 7, c)))['params'],
            mask.init(key(2), jnp.zeros((1, 14, 14, c)))['params'])

  return jax.jit(init)(), dict(c=c, fc=fc, k=k, a=a)


def test_initialisation_as_mmdet(small_heads):
  """RPN normal(0.01); shared fcs xavier-uniform; fc_cls normal(0.01), fc_reg normal(0.001); mask convs, deconv
  and conv_logits kaiming-normal fan_out (std sqrt(2 / (out * kh * kw))); every bias zero."""
  (rpn, box, mask), n = small_heads
  for tree in (rpn, box, mask):
    for name, layer in tree.items():
      assert not np.any(layer['bias']), name
  assert abs(np.std(rpn['rpn_conv']['kernel']) - 0.01) < 5e-4  # 9,216 draws
  for name, fan_in, fan_out in [('shared_fcs_0', 49 * n['c'], n['fc']), ('shared_fcs_1', n['fc'], n['fc'])]:
    bound = math.sqrt(6 / (fan_in + fan_out))
    k = np.abs(box[name]['kernel'])
    assert k.max() <= bound and k.max() > 0.95 * bound, name
  assert abs(np.std(box['fc_cls']['kernel']) - 0.01) < 1.5e-3 and abs(np.std(box['fc_reg']['kernel']) - 0.001) < 1e-4
  for name, std in [('convs_0', math.sqrt(2 / (9 * n['c']))), ('convs_3', math.sqrt(2 / (9 * n['c']))),
                    ('upsample', math.sqrt(2 / (4 * n['c']))), ('conv_logits', math.sqrt(2 / n['k']))]:
    k = np.ravel(mask[name]['kernel'])
    assert abs(k.std() / std - 1) < max(0.05, 2.5 / math.sqrt(k.size)), (name, k.std(), std)
  # Untruncated normal (torch's kaiming_normal_): draws beyond 2 std exist (truncated_normal has none).
  assert np.abs(mask['convs_1']['kernel']).max() > 2.5 * math.sqrt(2 / (9 * n['c']))


def test_initialisation_statistics_equal_mmdets(small_heads):
  """Our heads' per-parameter spread equals that of mmdet's own heads after init_weights, at the same widths."""
  torch = _mmdet()
  from mmdet.models.dense_heads import RPNHead as MMRPNHead
  from mmdet.models.roi_heads.bbox_heads import Shared2FCBBoxHead
  from mmdet.models.roi_heads.mask_heads import FCNMaskHead
  (rpn, box, mask), n = small_heads
  torch.manual_seed(0)
  anchors = dict(type='AnchorGenerator', scales=[8], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64])
  refs = {'rpn_head': (MMRPNHead(n['c'], feat_channels=n['c'], anchor_generator=anchors), rpn),
          'bbox_head': (Shared2FCBBoxHead(in_channels=n['c'], fc_out_channels=n['fc'], roi_feat_size=7,
                                          num_classes=n['k']), box),
          'mask_head': (FCNMaskHead(in_channels=n['c'], conv_out_channels=n['c'], num_classes=n['k']), mask)}
  checked = 0
  for ref, ours in refs.values():
    ref.init_weights()
    for key, value in ref.state_dict().items():
      layer, kind = key.rsplit('.', 1)
      layer = layer.replace('.conv', '').replace('.', '_')
      mine = np.asarray(ours[layer]['kernel' if kind == 'weight' else 'bias'])
      theirs = value.numpy()
      assert mine.size == theirs.size, key
      if kind == 'bias':
        assert not np.any(theirs) and not np.any(mine), key
      else:  # two estimates of one std from n draws each: a few times sqrt(1 / n) apart at most
        tol = max(0.1, 3.5 / math.sqrt(theirs.size))
        assert abs(mine.std() / theirs.std() - 1) < tol, (key, mine.std(), theirs.std())
        checked += 1
  assert checked == 3 + 4 + 6


def test_torch_roi_align_hand_cases():
  """tests/references' RoIAlign: on a linear ramp, bilinear sampling is exact, so each bin is the ramp at its
  centre (aligned: coordinates shift by half a pixel); samples past [-1, size] are zero; the adaptive grid
  takes ceil(roi / bins) samples per bin."""
  torch = pytest.importorskip('torch')
  from tests.references import torch_maskrcnn
  h, w = 20, 24
  yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  feats = torch.from_numpy(np.stack([2.0 * yy + xx, -xx + 0.5 * yy])[None].astype(np.float32))
  rois = torch.tensor([[0, 8.0, 4.0, 32.0, 20.0]])  # scale 0.5: x 3.5 ... 15.5, y 1.5 ... 9.5
  out = torch_maskrcnn.roi_align(feats, rois, (4, 6), spatial_scale=0.5).numpy()
  cx = 3.5 + (np.arange(6) + 0.5) * 2.0
  cy = 1.5 + (np.arange(4) + 0.5) * 2.0
  np.testing.assert_allclose(out[0, 0], 2 * cy[:, None] + cx[None, :], rtol=1e-6)
  np.testing.assert_allclose(out[0, 1], -cx[None, :] + 0.5 * cy[:, None], rtol=1e-6)
  far = torch_maskrcnn.roi_align(feats, torch.tensor([[0, 100.0, 100.0, 120.0, 120.0]]), 2, 0.5).numpy()
  assert not np.any(far)
  # 1 x 1 outputs at scale 1 on a map whose value is x: aligned, a box x -0.4 ... 2.6 starts at -0.9 and takes
  # 3 samples (ceil(3 / 1)) at x -0.4 (clamped to 0), 0.6, 1.6; one at x 3 ... 4.6 on a width-4 map samples
  # 2.9 and 3.7 (past the last column: its value, 3).
  ramp = torch.from_numpy(np.tile(np.arange(4, dtype=np.float32), (4, 1))[None, None])
  one = torch_maskrcnn.roi_align(ramp, torch.tensor([[0, -0.4, 0.0, 2.6, 1.0], [0, 3.0, 0.0, 4.6, 1.0]]), 1, 1.0)
  np.testing.assert_allclose(one.numpy().ravel(), [(0 + 0.6 + 1.6) / 3, (2.9 + 3.0) / 2], rtol=1e-6)


def _close(a, b, what):
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape and a.dtype == np.float32, (what, a.shape, b.shape)
  diff = float(np.abs(a - b).max())
  assert diff < 1e-4 and diff < 2e-5 * max(np.abs(b).max(), 1.0), (what, diff, np.abs(b).max())
  return diff


def _nhwc(t):
  return t.numpy().transpose(0, 2, 3, 1)


def _mmdet_outputs(ref, x, rois):
  """mmdet's FPN maps, RPN outputs, and its box and mask heads on `rois` pooled by its own extractors."""
  import torch
  with torch.no_grad():
    feats = ref.extract_feat(torch.from_numpy(x))
    obj, deltas = ref.rpn_head(feats)
    box = ref.roi_head._bbox_forward(feats, rois)  # cls_score, bbox_pred and bbox_feats (the pooled RoIs)
    mask = ref.roi_head._mask_forward(feats, rois)  # mask_preds, mask_feats
  return feats, (obj, deltas), box, mask


def _check_maps_and_rpn(net, variables, x, feats, rpn_ref):
  maps = jax.jit(lambda v, x: net.apply(v, x, method=net.features))(variables, x.transpose(0, 2, 3, 1))
  rpn = jax.jit(lambda v, f: net.apply(v, f, method=net.rpn))(variables, maps)
  worst = max(_close(a, _nhwc(b), f'P{i + 2}') for i, (a, b) in enumerate(zip(maps, feats)))
  pairs = zip(rpn[0] + rpn[1], list(rpn_ref[0]) + list(rpn_ref[1]))
  worst = max(worst, *(_close(a, _nhwc(b), 'rpn') for a, b in pairs))
  assert np.abs(rpn_ref[0][0].numpy()).max() > 0.05  # not a comparison of near-zero maps
  return maps, worst


def _check_heads(net, variables, box, mask):
  cls, reg = jax.jit(lambda v, p: net.apply(v, p, method=net.box_head))(variables, _nhwc(box['bbox_feats']))
  logits = jax.jit(lambda v, p: net.apply(v, p, method=net.mask_head))(variables, _nhwc(mask['mask_feats']))
  worst = max(_close(cls, box['cls_score'], 'fc_cls'), _close(reg, box['bbox_pred'], 'fc_reg'),
              _close(logits, _nhwc(mask['mask_preds']), 'mask logits'))
  assert np.abs(box['cls_score'].numpy()).max() > 0.05 and np.abs(mask['mask_preds'].numpy()).max() > 0.05
  assert np.abs(box['bbox_feats'].numpy()).max() > 0.05 and np.abs(mask['mask_feats'].numpy()).max() > 0.05
  return worst


def _compare(ref, net, variables, hw, batch=2, seed=0):
  import torch
  x = np.random.RandomState(seed).randn(batch, 3, *hw).astype(np.float32)
  feats, rpn, box, mask = _mmdet_outputs(ref, x, torch.from_numpy(ROIS[ROIS[:, 0] < batch]))
  _, worst = _check_maps_and_rpn(net, variables, x, feats, rpn)
  worst = max(worst, _check_heads(net, variables, box, mask))
  print(f'max |jax - mmdet| at {hw}: {worst:.2e}')


def test_torch_roi_align_equals_the_kernel_transcription():
  """tests/references' RoIAlign equals tests/structures/reference_roi_align.py (a NumPy transcription of
  torchvision's CPU kernel, which mmcv's shares) on random RoIs: inside, across and past the map's edges,
  tiny and degenerate ones, at two scales."""
  torch = pytest.importorskip('torch')
  if importlib.util.find_spec('tests.structures.reference_roi_align') is None:
    pytest.skip('tests/structures/reference_roi_align.py has not landed yet')
  from tests.references import torch_maskrcnn
  from tests.structures import reference_roi_align
  rng = np.random.RandomState(3)
  feats = rng.randn(2, 3, 13, 17).astype(np.float32)
  xy = rng.uniform(-20, 90, (40, 2, 2)).astype(np.float32)
  rois = np.concatenate([rng.randint(0, 2, (40, 1)), xy.min(1), xy.min(1) + rng.uniform(0, 60, (40, 2))], 1)
  rois = np.concatenate([rois, [[0, 10, 10, 10, 30], [1, 5.2, 5.1, 5.3, 5.4]]]).astype(np.float32)
  for scale, size in [(0.25, (7, 7)), (0.125, (4, 6))]:
    expected = reference_roi_align.roi_align_forward(feats, rois, size, scale, 0, True)
    got = torch_maskrcnn.roi_align(torch.from_numpy(feats), torch.from_numpy(rois), size, scale).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope='module')
def micro_pair():
  """mmdet's Mask R-CNN on the micro backbone (80 -> 5 classes), our variables from its state dict."""
  _mmdet()
  from tests.references import torch_maskrcnn
  ref = torch_maskrcnn.build(models.get_variant('hatnet_tiny', **MICRO), num_classes=5)
  variables = convert.from_mmdet({'state_dict': ref.state_dict(), 'meta': {}}, NAME, **MICRO)
  return ref, models.create(NAME, num_classes=5, **MICRO), variables


@pytest.fixture(scope='module')
def micro_outputs(micro_pair):
  """mmdet's outputs on a batch of 2 at 96 x 160 with ROIS (computed once for the tests below)."""
  import torch
  x = np.random.RandomState(0).randn(2, 3, 96, 160).astype(np.float32)
  return (x,) + _mmdet_outputs(micro_pair[0], x, torch.from_numpy(ROIS))


def test_fpn_maps_and_rpn_match_mmdet(micro_pair, micro_outputs):
  _, net, variables = micro_pair
  x, feats, rpn, _, _ = micro_outputs
  _check_maps_and_rpn(net, variables, x, feats, rpn)


def test_box_and_mask_heads_match_mmdet_on_its_pooled_rois(micro_pair, micro_outputs):
  _, net, variables = micro_pair
  _, _, _, box, mask = micro_outputs
  _check_heads(net, variables, box, mask)


def test_heads_on_jax_roi_align_match_mmdet(micro_pair, micro_outputs):
  """The same RoIs pooled from mmdet's maps by hatnet_jax's multi-level RoIAlign (window None: exact) give
  mmdet's head outputs: the eval path of the second stage but the proposals."""
  if importlib.util.find_spec('hatnet_jax.structures.roi_align') is None:
    pytest.skip('hatnet_jax.structures.roi_align has not landed yet')
  from hatnet_jax.structures import roi_align
  _, net, variables = micro_pair
  _, feats, _, box, mask = micro_outputs
  @functools.partial(jax.jit, static_argnums=(3,))
  def pool_and_run(variables, maps, boxes, size):
    pooled, overflow = roi_align.multilevel_roi_align(maps, boxes, (4, 8, 16, 32), (size, size), window=None)
    out = net.apply(variables, pooled, method=net.box_head if size == 7 else net.mask_head)
    return (out[0] if size == 7 else out), overflow

  for b in range(2):
    keep = ROIS[:, 0] == b
    maps = [_nhwc(f[b:b + 1])[0] for f in feats[:4]]
    for size, expected in [(7, box['cls_score'].numpy()[keep]), (14, _nhwc(mask['mask_preds'])[keep])]:
      out, overflow = pool_and_run(variables, maps, ROIS[keep, 1:], size)
      assert int(overflow) == 0
      _close(out, expected, f'heads on the JAX RoIAlign ({size}x{size})')


@pytest.mark.slow  # ~25 s + the fixture: another input size (odd strides: ceil at every level)
def test_eval_outputs_match_mmdet_mask_rcnn_other_size(micro_pair):
  ref, net, variables = micro_pair
  _compare(ref, net, variables, (100, 132), seed=1)


@pytest.mark.slow  # ~30 s: hatnet_tiny's real widths and depths
def test_eval_outputs_match_mmdet_mask_rcnn_real_tiny():
  _mmdet()
  from tests.references import torch_maskrcnn
  ref = torch_maskrcnn.build(models.get_variant('hatnet_tiny'), seed=1)
  variables = convert.from_mmdet(ref.state_dict(), NAME)
  _compare(ref, models.create(NAME, num_classes=80), variables, (100, 132), batch=1, seed=1)


@pytest.mark.slow  # ~30 s in all: builds the four PyTorch models
@pytest.mark.parametrize('name', VARIANT_NAMES)
def test_parameter_counts_equal_mmdet(name):
  _mmdet()
  from tests.references import torch_maskrcnn
  assert torch_maskrcnn.count_params(torch_maskrcnn.build(models.get_variant(name))) == MASK_RCNN_PARAM_COUNTS[name]


@pytest.mark.slow  # ~120 s on the loaded 2-core CPU: compiles a backward pass through every submodule
def test_gradients_reach_every_parameter_in_bfloat16():
  """The task's call pattern (features, rpn, box_head, mask_head in one apply) with train=True, drop path and
  bfloat16 compute: float32 outputs and a finite gradient for every parameter; params stay float32."""
  net = models.create(NAME, num_classes=4, dtype='bfloat16', drop_path_rate=0.1, neck_channels=32,
                      rpn_channels=16, fc_channels=32, mask_channels=16, **MICRO)
  x = jax.random.normal(jax.random.key(0), (2, 64, 96, 3))
  variables = jax.jit(lambda: net.init(jax.random.key(1), x, train=False))()

  def forward(module, x):
    feats = module.features(x, True)
    obj, deltas = module.rpn(feats)
    cls, reg = module.box_head(feats[1][:, :7, :7].astype(jnp.float32), True)  # stand-ins for pooled RoIs
    masks = module.mask_head(feats[0][:, :14, :14].astype(jnp.float32))
    outs = obj + deltas + [cls, reg, masks]
    assert {a.dtype for a in outs} == {jnp.dtype(jnp.float32)}
    return sum(jnp.mean(jnp.abs(a)) for a in outs)

  def loss(params):
    return net.apply({'params': params}, x, rngs={'dropout': jax.random.key(2)}, method=forward)

  grads = jax.jit(jax.grad(loss))(variables['params'])
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert g.dtype == jnp.float32 and np.all(np.isfinite(g)) and np.any(g), jax.tree_util.keystr(path)
