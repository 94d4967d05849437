"""Every config in configs/ loads as main.py loads it and builds its model; the variants follow the PVT recipe."""
import glob
import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.references.param_counts import PARAM_COUNTS
from hatnet_jax import models, tasks
from tests import REPO_ROOT

REPO = REPO_ROOT
CONFIGS = sorted(glob.glob(os.path.join(REPO, 'configs', '*.py')))
VARIANTS = {'hatnet_tiny': 0.1, 'hatnet_small': 0.1, 'hatnet_medium': 0.3, 'hatnet_large': 0.3}


def load_config(path):
  """What ml_collections.config_flags does with --config=path."""
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_all_expected_configs_exist():
  names = {os.path.basename(p) for p in CONFIGS}
  assert {'default.py', 'digits.py', 'seg_default.py', 'seg_digits.py'} | {f'{v}.py' for v in VARIANTS} \
      | {f'seg_fpn_{v}.py' for v in VARIANTS} | {'det_default.py', 'retinanet_digits.py'} \
      | {f'retinanet_{v}.py' for v in VARIANTS} | {'maskrcnn_default.py', 'maskrcnn_digits.py'} \
      | {f'maskrcnn_{v}.py' for v in VARIANTS} <= names


def test_pretrained_digit_scenes_start_from_the_digits_demos_last_checkpoint():
  """seg_digits.py:pretrained names the checkpoint the digits demo (configs/digits.py) writes last, and
  the two demos share one backbone, so the classifier's parameters fit the segmentation backbone."""
  from configs import digits, seg_digits  # pylint: disable=g-import-not-at-top
  from hatnet_jax.training import schedule  # pylint: disable=g-import-not-at-top
  cls, seg = digits.get_config(), seg_digits.get_config('pretrained')
  last = schedule.to_steps(cls.num_epochs, cls.get('num_steps'), schedule.steps_per_epoch(1442, cls.batch_size))
  assert seg.init_from == f'runs/digits/checkpoints/{last}/state'
  assert {k: seg.model[k] for k in digits.BACKBONE} == {k: cls.model[k] for k in digits.BACKBONE}
  assert not seg_digits.get_config().init_from  # the default trains from scratch


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_config_loads_and_builds_its_model(path):
  config = load_config(path)
  task = tasks.create(config)
  task.validate()
  segmentation = config.task == 'segmentation'
  detection = config.task in ('detection', 'instance_segmentation')
  num_classes = {'digits': 10, 'digit_scenes': 11, 'coco': 80}.get(
      config.data.dataset.split('/')[0], 150 if segmentation else 10 if detection else 1000)
  model = task.create_model(num_classes)
  size = task.init_input().shape[1]
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), train=False))
  logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, size, size, 3)), train=False), variables)
  if config.task == 'instance_segmentation':  # RPN maps per level (P2-P6); the heads on one zero RoI
    (objectness, deltas), (cls_logits, box_deltas), mask_logits = logits
    anchors = config.model.num_anchors
    assert [m.shape for m in objectness] == [(2, -(-size // s), -(-size // s), anchors)
                                             for s in config.detection.rpn_strides]
    assert [m.shape[-1] for m in deltas] == [anchors * 4] * len(config.detection.rpn_strides)
    assert cls_logits.shape == (1, num_classes + 1) and box_deltas.shape == (1, num_classes * 4)
    assert mask_logits.shape == (1, 28, 28, num_classes)
    return
  if detection:  # per level (P3-P7) class logits and box deltas
    cls_maps, box_maps = logits
    anchors = config.model.num_anchors
    assert [m.shape for m in cls_maps] == [(2, -(-size // s), -(-size // s), anchors * num_classes)
                                           for s in config.detection.strides]
    assert [m.shape[-1] for m in box_maps] == [anchors * 4] * len(config.detection.strides)
    return
  assert logits.shape == ((2, size, size, num_classes) if segmentation else (2, num_classes))
  if config.model.name in VARIANTS and num_classes == 1000:
    assert sum(x.size for x in jax.tree.leaves(variables)) == PARAM_COUNTS[config.model.name]


@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_variant_configs_follow_the_pvt_recipe(name):
  c = load_config(os.path.join(REPO, 'configs', f'{name}.py'))
  assert c.model.name == name and c.task == 'classification' and c.data.dataset == 'imagenet2012'
  assert (c.b1, c.b2, c.eps) == (0.9, 0.999, 1e-8)
  assert c.batch_size == 1024 and c.base_lr * c.batch_size / c.lr_base_batch == pytest.approx(1e-3)
  assert c.weight_decay == 0.05
  assert (c.num_epochs, c.num_steps, c.warmup_epochs, c.warmup_steps) == (300, None, 5, None)
  assert (c.warmup_lr, c.min_lr) == (1e-6, 1e-5)
  assert c.model.drop_path_rate == VARIANTS[name]
  assert c.grad_clip_norm == (1.0 if name == 'hatnet_large' else 0.0)
  assert c.mixup.to_dict() == dict(mixup_alpha=0.8, cutmix_alpha=1.0, mixup_prob=1.0, switch_prob=0.5,
                                  label_smoothing=0.1)
  assert (c.eval_every_epochs, c.eval_every_steps) == (1, None)


def _main_with(tmp_path, *overrides):
  """main.py on the digits config with these --config.* overrides (expected to stop at flag parsing)."""
  cmd = [sys.executable, os.path.join(REPO, 'main.py'), f'--config={REPO}/configs/digits.py',
         f'--workdir={tmp_path}', *overrides]
  return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))


def test_main_rejects_unknown_config_keys(tmp_path):
  out = _main_with(tmp_path, '--config.no_such_field=1')
  assert out.returncode == 2
  assert 'no_such_field' in out.stderr and 'Traceback' not in out.stderr
  assert not os.listdir(tmp_path)  # nothing was started


def test_a_misspelt_field_gets_one_paragraph_with_the_suggestion(tmp_path):
  out = _main_with(tmp_path, '--config.batch_sise=8', '--config.model.drop_pth_rate=0.2')
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [
      "Error: --config.batch_sise: the config has no field 'batch_sise'; check the spelling against the config "
      'file (unknown fields are rejected).',
      'Did you mean --config.batch_size?']


def test_a_value_of_the_wrong_type_gets_one_paragraph(tmp_path):
  out = _main_with(tmp_path, '--config.model.unroll=True')  # an int field: unroll stages of <= N blocks
  assert out.returncode == 2 and 'Traceback' not in out.stderr
  assert out.stderr.strip().splitlines() == [
      "Error: flag --config.model.unroll=True: invalid literal for int() with base 10: 'True'. A --config.FIELD "
      "value is parsed as the type of the field's value in the config file; give one of that type."]
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_segmentation_configs_follow_the_pvt_mmseg_recipe(name):
  c = load_config(os.path.join(REPO, 'configs', f'seg_fpn_{name}.py'))
  assert c.task == 'segmentation' and c.model.name == f'semfpn_{name}' and c.data.dataset == 'ade20k'
  assert (c.batch_size, c.base_lr * c.batch_size / c.lr_base_batch, c.weight_decay) == (32, 2e-4, 1e-4)
  assert (c.weight_decay_on, c.lr_schedule, c.lr_power, c.min_lr) == ('all', 'poly', 0.9, 0.0)
  assert (c.num_steps, c.warmup_steps, c.eval_every_steps) == (40_000, 0, 4_000)
  assert (c.model.drop_path_rate, c.model.head_drop_rate) == (0.1, 0.1)
  d = c.data
  assert (d.crop_size, d.scale, d.ratio_range, d.cat_max_ratio, d.hflip_prob, d.photometric, d.align) == (
      512, (2048, 512), (0.5, 2.0), 0.75, 0.5, True, 32)


@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_detection_configs_follow_the_pvt_mmdet_recipe(name):
  """PVT's retinanet_pvt_*_fpn_1x_coco.py: AdamW 1e-4 (large: 1e-4 / 1.4 at 1 image per GPU), weight decay
  1e-4, 12 epochs, x0.1 after 8 and 11, warmup 500 steps from 0.001x; mmdet's RetinaNet anchors and test_cfg."""
  c = load_config(os.path.join(REPO, 'configs', f'retinanet_{name}.py'))
  assert c.task == 'detection' and c.model.name == f'retinanet_{name}' and c.data.dataset == 'coco'
  large = name == 'hatnet_large'
  per_image = 1 if large else 2
  assert (c.batch_size, c.detection.images_per_group) == (8 * per_image, per_image)
  np.testing.assert_allclose(c.base_lr * c.batch_size / c.lr_base_batch, 1e-4 / 1.4 if large else 1e-4)
  assert (c.weight_decay, c.weight_decay_on, c.grad_clip_norm) == (1e-4, 'all', 0.0)
  assert (c.lr_schedule, c.lr_milestone_epochs, c.lr_decay_factor, c.num_epochs) == ('step', (8, 11), 0.1, 12)
  assert (c.warmup_steps, c.warmup_ratio) == (500, 0.001)
  d, det = c.data, c.detection
  assert (d.scale, d.hflip_prob, d.size_divisor) == ((1333, 800), 0.5, 32)
  assert (det.strides, det.octave_base_scale, det.scales_per_octave, det.ratios) == (
      (8, 16, 32, 64, 128), 4, 3, (0.5, 1.0, 2.0))
  assert (det.pos_iou_thr, det.neg_iou_thr, det.min_pos_iou, det.focal_gamma, det.focal_alpha) == (
      0.5, 0.4, 0.0, 2.0, 0.25)
  assert (det.nms_pre, det.score_thr, det.nms_iou, det.max_per_img) == (1000, 0.05, 0.5, 100)
