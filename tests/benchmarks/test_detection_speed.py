"""benchmarks/detection_speed.py: its plain-value config against configs/det_default.py, XLA's flop convention
on a hand-counted convolution, the synthetic batch, its loss and prediction against the Detection task's, the
NMS that stands in for mmcv's, and a --smoke run without tensorflow, clu or ml_collections."""
import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import REPO_ROOT
sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))
import detection_speed  # noqa: E402


def test_plain_config_equals_the_detection_defaults():
  pytest.importorskip('ml_collections')
  from configs import det_default  # pylint: disable=g-import-not-at-top
  want = det_default.detection_config().to_dict()
  assert detection_speed.DETECTION == {k: tuple(v) if isinstance(v, list) else v for k, v in want.items()}
  c = det_default.get_config()
  assert (detection_speed.SIZE_DIVISOR, detection_speed.MAX_BOXES) == (c.data.size_divisor, c.data.max_boxes)
  assert detection_speed.LR == c.base_lr * c.batch_size / c.lr_base_batch
  assert detection_speed.WEIGHT_DECAY == c.weight_decay and c.weight_decay_on == 'all'
  assert (c.b1, c.b2, c.eps) == (0.9, 0.999, 1e-8) and c.model.drop_path_rate == 0.1


def test_xla_counts_two_flops_per_multiply_add_inside_the_image():
  """The table halves XLA's count. A 3x3 conv, 3 -> 4 channels, on 8x8: 'VALID' is 6*6 outputs x 27 taps x 4 =
  3888 MACs; with 'SAME' XLA leaves out the taps on the zero padding (per axis 2 + 6*3 + 2 = 22 taps: 22*22*12 =
  5808 MACs) where mmcv/mmengine count every tap (8*8*27*4 = 6912)."""
  x = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
  k = jax.ShapeDtypeStruct((3, 3, 3, 4), jnp.float32)
  for padding, macs in (('VALID', 3888), ('SAME', 5808)):
    conv = jax.jit(lambda x, k, padding=padding: jax.lax.conv_general_dilated(
        x, k, (1, 1), padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
    assert conv.lower(x, k).cost_analysis()['flops'] == 2 * macs, padding


def test_forward_cost_halves_xla_and_grows_with_the_input():
  small = detection_speed.forward_cost('retinanet_hatnet_tiny', (64, 96), **detection_speed.model_kwargs(True))
  large = detection_speed.forward_cost('retinanet_hatnet_tiny', (128, 192), **detection_speed.model_kwargs(True))
  assert small['gmacs'] == small['xla_gflops'] / 2 and small['params_m'] == large['params_m']
  assert 3.5 < large['gmacs'] / small['gmacs'] < 4.5  # ~4x the pixels: the cost is per pixel (and anchor)


def test_synthetic_batch_has_boxes_inside_each_extent():
  b = detection_speed.synthetic_batch(2, (800, 1344))
  assert b['image'].shape == (2, 800, 1344, 3) and b['image_size'].tolist() == [[800, 1333], [770, 1293]]
  n = detection_speed.BOXES_PER_IMAGE
  assert b['box_valid'].sum(axis=1).tolist() == [n, n] and b['boxes'].shape == (2, detection_speed.MAX_BOXES, 4)
  for i in range(2):
    boxes = b['boxes'][i, :n]
    h, w = b['image_size'][i]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert (boxes[:, 2:] - boxes[:, :2] >= 16).all()
  assert (b['labels'][:, :n] < detection_speed.NUM_CLASSES).all() and not b['boxes'][:, n:].any()


@pytest.mark.slow  # four compilations of the loss and the prediction: ~45 s here
def test_loss_and_prediction_are_the_detection_tasks():
  pytest.importorskip('ml_collections')
  pytest.importorskip('pycocotools')
  from configs import det_default  # pylint: disable=g-import-not-at-top
  from hatnet_jax import models  # pylint: disable=g-import-not-at-top
  from hatnet_jax.tasks import detection  # pylint: disable=g-import-not-at-top
  config = det_default.get_config()
  task = detection.Detection(config)
  model = models.create('retinanet_hatnet_tiny', num_classes=detection_speed.NUM_CLASSES,
                        **detection_speed.model_kwargs(True))
  params = model.init(jax.random.key(0), jnp.zeros((1, 64, 96, 3)))['params']
  batch = jax.tree.map(jnp.asarray, detection_speed.synthetic_batch(2, (64, 96)))
  cfg = types.SimpleNamespace(**detection_speed.DETECTION)
  rng = jax.random.key(3)
  ours = jax.jit(lambda p, b: detection_speed.train_loss(model, p, b, rng, cfg))(params, batch)
  want = jax.jit(lambda p, b: task.train_loss(model, {'params': p}, b, rng, {})[:2])(params, batch)
  assert float(ours[0]) == float(want[0]) and float(ours[1]['train_positives_per_image']) > 0
  ours = jax.jit(lambda p, b: detection_speed.predict(model, p, b, cfg))(params, batch)
  want = jax.jit(lambda p, b: task.predict(model, {'params': p}, b))(params, batch)
  for k in ('boxes', 'scores', 'labels', 'valid'):
    np.testing.assert_array_equal(ours[k], want[k])


def test_mmcv_batched_nms_stand_in_keeps_other_classes():
  torch = pytest.importorskip('torch')
  boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60]], dtype=torch.float32)
  scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
  labels = torch.tensor([0, 0, 1, 0])  # box 1 overlaps box 0 (IoU 9/11) in class 0; box 2 is another class
  dets, keep = detection_speed._mmcv_batched_nms(boxes, scores, labels, {'iou_threshold': 0.5})
  assert keep.tolist() == [0, 2, 3]
  assert torch.equal(dets[:, :4], boxes[keep]) and torch.equal(dets[:, 4], scores[keep])


# As on the GPU image: these packages are absent (import raises ModuleNotFoundError, find_spec gives None).
_BLOCK = """
import runpy, sys
sys.modules.update(dict.fromkeys(('tensorflow', 'tensorflow_datasets', 'clu', 'ml_collections')))
sys.argv = ['benchmarks/detection_speed.py'] + sys.argv[1:]
runpy.run_path('benchmarks/detection_speed.py', run_name='__main__')
"""


@pytest.mark.slow  # compiles a train step and a prediction, builds mmdet's model: ~1 min here
def test_smoke_run_without_tensorflow_clu_or_ml_collections(tmp_path):
  out = tmp_path / 'rows.jsonl'
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')  # one CPU device, as the benchmark runs
  run = subprocess.run([sys.executable, '-c', _BLOCK, '--smoke', '--huge_pages=0', f'--json_out={out}'],
                       capture_output=True, text=True, timeout=600, cwd=REPO_ROOT, env=env)
  assert run.returncode == 0, run.stderr[-3000:]
  flops, timing = [json.loads(line) for line in out.read_text().splitlines()]
  assert flops['input'] == '128x192' and flops['gmacs'] == flops['xla_gflops'] / 2 > 0
  assert timing['canvas'] == '128x192' and timing['train_batch'] == 2
  for key in ('train_compile_s', 'ours_train_images_per_s', 'ours_infer_b1_images_per_s', 'infer_b1_compile_s'):
    assert timing[key] > 0, key
  assert np.isfinite(timing['train_loss'])
  assert timing['ours_infer_b1_detections'] == 100  # every score starts above score_thr: NMS at full load
  assert '| ours |' in run.stdout and 'GMACs' in run.stdout
  if 'mmdet comparison skipped' in run.stdout:
    return
  assert timing['mmdet_infer_b1_detections'] == 100 and timing['torch_threads'] == timing['threads']
  assert timing['train_ratio'] > 0 and timing['infer_b1_ratio'] > 0 and flops['mmengine_gmacs'] > 0
  # Both heads start at the class prior with ~zero deltas (normal(0.01) init): the same boxes, the same loss.
  np.testing.assert_allclose(timing['mmdet_train_loss'], timing['train_loss'], rtol=1e-3)
  assert '| ours / mmdet |' in run.stdout
