"""benchmarks/seg_speed.py: the synthetic batch, the profile's op_name parts, the peak-RSS meter, mmseg's model
config against PVT's settings, bad flags, and a --smoke run without tensorflow, clu or ml_collections."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import REPO_ROOT
sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))
import seg_speed  # noqa: E402


def test_synthetic_batch_has_a_tenth_ignored_and_eval_keys():
  b = seg_speed.synthetic_batch(2, 64)
  assert b['image'].shape == (2, 64, 64, 3) and b['label'].shape == (2, 64, 64)
  assert b['eval_label'].shape == (2, 48, 48) and b['orig_size'].tolist() == [[48, 48], [48, 48]]
  ignored = (b['label'] == 255).mean()
  assert 0.07 < ignored < 0.13 and b['label'][b['label'] != 255].max() < seg_speed.NUM_CLASSES


@pytest.mark.parametrize('op_name, part', [
    ('jit(step)/jvp(SemanticFPN)/SemanticFPN.features/backbone.features/stage1/blocks/Block/conv/norm1/ffi_call',
     'backbone'),
    ('jit(step)/transpose(jvp(SemanticFPN))/SemanticFPN.features/neck/fpn_convs_2/conv_general_dilated',
     'FPN 3x3 convs'),
    ('jit(step)/jvp(SemanticFPN)/SemanticFPN.features/neck/lateral_convs_0/conv_general_dilated', 'FPN laterals'),
    ('jit(step)/transpose(jvp(SemanticFPN))/SemanticFPN.features/neck/jit(_take)/scatter-add', 'upsampling'),
    ('jit(step)/jvp(SemanticFPN)/decode_head/oh,bhwc->bowc/dot_general', 'upsampling'),
    ('jit(step)/jvp(SemanticFPN)/pw,bowc->bopc/dot_general', 'upsampling'),
    ('jit(step)/transpose(jvp(SemanticFPN))/decode_head/scale_heads_3_2/conv/conv_general_dilated', 'head'),
    ('jit(step)/jvp(jit(log_softmax))/reduce_max', 'loss'),
    ('jit(step)/transpose(jvp(jit(take_along_axis)))/scatter-add', 'loss'),
    ('jit(step)/pow', 'optimizer'),
    ('jit(step)/jit(_threefry_split)/slice', 'other'),
    ('', 'other'),
])
def test_profile_parts_of_op_names(op_name, part):
  assert seg_speed.profile_part(op_name) == part


@pytest.mark.skipif(not os.path.exists('/proc/self/clear_refs'), reason='needs Linux /proc')
def test_rss_meter_sees_a_step_that_touches_memory():
  meter, kept = seg_speed.RssMeter(), []
  meter.wrap(lambda: kept.append(np.ones(300 * 2 ** 20 // 8)))()  # 300 MiB, touched
  assert 0.25 < meter.rise / seg_speed.GIB < 0.5 and meter.peak >= meter.rise
  kept.clear()
  meter2 = seg_speed.RssMeter()
  meter2.wrap(lambda: None)()
  assert meter2.rise / seg_speed.GIB < 0.05  # the mark was reset: the earlier 300 MiB are not this call's


def test_mmseg_config_has_pvts_settings():
  pytest.importorskip('torch')
  pytest.importorskip('mmseg')
  from tests.references import mmseg_semfpn  # pylint: disable=g-import-not-at-top
  variant = seg_speed.models.get_variant('hatnet_tiny')
  cfg = mmseg_semfpn.config(variant)
  assert cfg.type == 'EncoderDecoder' and cfg.backbone.type == mmseg_semfpn.BACKBONE
  assert (cfg.neck.type, cfg.neck.in_channels, cfg.neck.out_channels, cfg.neck.num_outs) == (
      'FPN', [48, 96, 240, 384], 256, 4)
  head = cfg.decode_head
  assert (head.type, head.channels, head.num_classes, head.dropout_ratio, head.norm_cfg.type) == (
      'FPNHead', 128, 150, 0.1, 'BN')
  assert head.in_channels == [256] * 4 and head.feature_strides == [4, 8, 16, 32] and not head.align_corners
  assert head.loss_decode.type == 'CrossEntropyLoss' and not head.loss_decode.get('avg_non_ignore', False)
  assert cfg.test_cfg.mode == 'whole' and 'pretrained' not in cfg and 'data_preprocessor' not in cfg


@pytest.mark.parametrize('argv, words', [(['--models=hatnet_tiny'], 'not a Semantic FPN model'),
                                         (['--sizes=500'], 'multiples of 32'),
                                         (['--batch=0'], '--batch')])
def test_bad_flags_raise_one_clear_error(argv, words):
  with pytest.raises(ValueError, match=words):
    seg_speed.main(argv + ['--huge_pages=0'])


# As on the GPU image: these packages are absent (import raises ModuleNotFoundError, find_spec gives None).
_BLOCK = """
import runpy, sys
sys.modules.update(dict.fromkeys(('tensorflow', 'tensorflow_datasets', 'clu', 'ml_collections')))
sys.argv = ['benchmarks/seg_speed.py'] + sys.argv[1:]
runpy.run_path('benchmarks/seg_speed.py', run_name='__main__')
"""


@pytest.mark.slow  # compiles a train step and a prediction, builds mmseg's model: ~40 s quiet, ~100 s loaded
def test_smoke_run_without_tensorflow_clu_or_ml_collections(tmp_path):
  out = tmp_path / 'rows.jsonl'
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')  # one CPU device, as the benchmark runs
  run = subprocess.run([sys.executable, '-c', _BLOCK, '--smoke', '--profile', '--huge_pages=0', f'--json_out={out}'],
                       capture_output=True, text=True, timeout=600, cwd=REPO_ROOT, env=env)
  assert run.returncode == 0, run.stderr[-3000:]
  (row,) = [json.loads(line) for line in out.read_text().splitlines()]
  assert (row['model'], row['size'], row['label_size'], row['batch'], row['repeats']) == (
      'semfpn_hatnet_tiny', 64, 48, 2, 1)
  for key in ('ours_train_compile_s', 'ours_infer_compile_s', 'ours_train_images_per_s', 'ours_infer_images_per_s',
              'ours_train_peak_rss_gib', 'ours_infer_peak_rss_gib'):
    assert row[key] > 0, key
  assert row['ours_infer_shape'] == [2, 48, 48]
  # conv_seg starts at normal(0.01): logits ~0, so the loss is ln(150) per labelled pixel, 0 per ignored one,
  # averaged over all pixels (mmseg's avg_non_ignore=False): ~0.9 ln(150) after two small steps.
  labelled = (seg_speed.synthetic_batch(2, 64)['label'] != 255).mean()
  np.testing.assert_allclose(row['ours_train_loss'], labelled * math.log(150), rtol=0.02)
  profile = row['ours_train_profile']
  assert set(profile) == set(seg_speed.PROFILE_PARTS) and abs(sum(v['share'] for v in profile.values()) - 1) < 1e-6
  for part in ('backbone', 'FPN 3x3 convs', 'upsampling', 'head', 'loss', 'optimizer'):
    assert profile[part]['s'] > 0, part
  assert '| semfpn_hatnet_tiny | 64 | train |' in run.stdout and "our train step's kernel time" in run.stdout
  if 'mmseg comparison skipped' in run.stdout:
    return
  assert row['mmseg_infer_shape'] == [2, 48, 48] and row['torch_threads'] == row['threads']
  assert row['train_ratio'] > 0 and row['infer_ratio'] > 0 and row['mmseg_train_peak_rss_gib'] > 0
  np.testing.assert_allclose(row['mmseg_train_loss'], labelled * math.log(150), rtol=0.02)
