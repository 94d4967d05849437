"""benchmarks/maskrcnn_speed.py: its plain-value config against configs/maskrcnn_default.py and the --smoke
widths against maskrcnn_digits ':tiny', the synthetic batch (sizes, boxes, bit-packed ellipse masks, a
hand-computed mask), the host row without pycocotools, bad flags, and a --smoke run without tensorflow, clu or
ml_collections."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import REPO_ROOT
sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))
import maskrcnn_speed  # noqa: E402


def _plain(d: dict) -> dict:
  return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def test_plain_config_equals_the_maskrcnn_defaults():
  pytest.importorskip('ml_collections')
  from configs import maskrcnn_default  # pylint: disable=g-import-not-at-top
  assert maskrcnn_speed.DETECTION == _plain(maskrcnn_default.maskrcnn_config().to_dict())
  c = maskrcnn_default.get_config()
  assert (maskrcnn_speed.SIZE_DIVISOR, maskrcnn_speed.MAX_BOXES) == (c.data.size_divisor, c.data.max_boxes)
  assert c.data.canvases[0] == (800, 1344) and c.data.with_masks
  assert maskrcnn_speed.LR == c.base_lr * c.batch_size / c.lr_base_batch
  assert maskrcnn_speed.WEIGHT_DECAY == c.weight_decay and c.weight_decay_on == 'all'
  assert (c.b1, c.b2, c.eps) == (0.9, 0.999, 1e-8) and c.model.drop_path_rate == maskrcnn_speed.DROP_PATH
  assert c.model.name == 'maskrcnn_hatnet_tiny'


def test_smoke_widths_are_maskrcnn_digits_tiny():
  pytest.importorskip('ml_collections')
  from configs import maskrcnn_digits  # pylint: disable=g-import-not-at-top
  c = maskrcnn_digits.get_config('tiny')
  model = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in c.model.to_dict().items()}
  assert {k: model[k] for k in maskrcnn_speed.SMOKE_MODEL} == maskrcnn_speed.SMOKE_MODEL
  assert vars(maskrcnn_speed.detection_cfg(True)) == _plain(c.detection.to_dict())


def test_fields_read_like_a_configdict():
  cfg = maskrcnn_speed.detection_cfg(False)  # the loss reads optional fields with cfg.get(name, default)
  assert cfg.roi_window == cfg.get('roi_window') == (42, 42) and cfg.get('no_such_field', 3) == 3
  assert maskrcnn_speed.detection_cfg(True).get('rpn_anchor_scale') == 4 and cfg.rpn_anchor_scale == 8


def test_ellipse_mask_by_hand():
  """Box (0, 0, 6, 4) on a 4x8 canvas: centre (3, 2), radii 3 and 2. Row 0's pixel centres (y 0.5) need
  |x - 3| <= 3 sqrt(1 - 0.75^2) = 1.98: columns 1-4 (bits 1-4 little-endian: 30; big-endian would be 120);
  row 1 (y 1.5) |x - 3| <= 2.90: columns 0-5 (63); rows 2-3 mirror 1-0."""
  packed = maskrcnn_speed.ellipse_masks(np.array([[0, 0, 6, 4]], np.float32), (4, 8))
  assert packed.dtype == np.uint8 and packed.shape == (1, 4, 1) and packed[0, :, 0].tolist() == [30, 63, 63, 30]


def test_synthetic_batch_at_1333x800():
  b = maskrcnn_speed.synthetic_batch(2, (800, 1344))
  m = maskrcnn_speed.MAX_BOXES
  assert b['image'].shape == (2, 800, 1344, 3) and b['image'].dtype == np.float32
  assert b['masks'].shape == (2, m, 800, 168) and b['masks'].dtype == np.uint8
  assert b['image_size'].tolist() == [[800, 1333], [800, 1066]] and b['orig_size'].tolist() == [[480, 800],
                                                                                                [480, 640]]
  np.testing.assert_allclose(b['scale'], b['image_size'] / b['orig_size'], rtol=1e-6)
  assert b['boxes'].shape == (2, m, 4) and b['labels'].shape == b['box_valid'].shape == (2, m)
  for i in range(2):
    n = int(b['box_valid'][i].sum())
    assert 5 <= n <= 10 and b['box_valid'][i, :n].all() and not b['crowd'][i].any()
    boxes, (h, w) = b['boxes'][i, :n], b['image_size'][i]
    wh = boxes[:, 2:] - boxes[:, :2]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert (wh.max(axis=1) >= 0.04 * 800 - 1e-3).all() and (wh.max(axis=1) <= 400 * np.sqrt(2)).all()
    assert ((b['labels'][i, :n] >= 0) & (b['labels'][i, :n] < 80)).all() and (b['labels'][i, n:] == -1).all()
    assert not b['boxes'][i, n:].any() and not b['masks'][i, n:].any()
    masks = np.unpackbits(b['masks'][i, :n], axis=-1, bitorder='little').astype(bool)
    ys, xs = np.arange(800) + 0.5, np.arange(1344) + 0.5
    for mask, (x0, y0, x1, y1) in zip(masks, boxes):
      inside = ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]
      assert mask.any() and not (mask & ~inside).any()  # the ellipse lies in its box
      if min(x1 - x0, y1 - y0) >= 16:
        np.testing.assert_allclose(mask.sum(), np.pi / 4 * (x1 - x0) * (y1 - y0), rtol=0.1)


def test_synthetic_batch_and_flags_reject_bad_input():
  with pytest.raises(ValueError, match='multiples of 32'):
    maskrcnn_speed.synthetic_batch(2, (100, 96))
  with pytest.raises(ValueError, match='not a Mask R-CNN'):
    maskrcnn_speed.main(['--model=retinanet_hatnet_tiny', '--huge_pages=0'])
  with pytest.raises(ValueError, match='--train_batch a multiple of 2'):
    maskrcnn_speed.main(['--train_batch=3', '--huge_pages=0'])


# As on a bare GPU image: these packages are absent (import raises ModuleNotFoundError, find_spec gives None).
_HIDE = "import sys; sys.modules.update(dict.fromkeys(({})))\n"
_HOST_WITHOUT_PYCOCOTOOLS = _HIDE.format("'pycocotools', 'pycocotools.mask'") + """
import numpy as np
sys.path.insert(0, 'benchmarks')
import maskrcnn_speed
assert not maskrcnn_speed.HAVE_PYCOCOTOOLS
rng = np.random.RandomState(0)
xy = rng.uniform(0, 300, (2, 100, 2))
boxes = np.concatenate([xy, xy + rng.uniform(1, 100, (2, 100, 2))], axis=-1).astype(np.float32)
outputs = dict(boxes=boxes, scores=np.ones((2, 100), np.float32),
               labels=np.zeros((2, 100), np.int32), valid=np.arange(100)[None] < np.array([[100], [30]]),
               mask_probs=rng.uniform(0, 1, (2, 100, 28, 28)).astype(np.float32), canvas_boxes=None)
row = {}
run = maskrcnn_speed.host_runner(outputs, {'orig_size': np.array([[480, 640], [427, 640]], np.int32)}, row)
run()
print(row['rles_per_image'])
"""


def test_host_row_pastes_without_pycocotools():
  run = subprocess.run([sys.executable, '-c', _HOST_WITHOUT_PYCOCOTOOLS], capture_output=True, text=True,
                       timeout=300, cwd=REPO_ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert run.returncode == 0, run.stderr[-3000:]
  assert run.stdout.split()[-1] == '65.0'  # (100 + 30) / 2 valid detections pasted per image


_SMOKE = _HIDE.format("'tensorflow', 'tensorflow_datasets', 'clu', 'ml_collections'") + """
import runpy
sys.argv = ['benchmarks/maskrcnn_speed.py'] + sys.argv[1:]
runpy.run_path('benchmarks/maskrcnn_speed.py', run_name='__main__')
"""


@pytest.mark.slow  # compiles two predictions and a train step: ~60 s quiet, ~100 s under load here
def test_smoke_run_without_tensorflow_clu_or_ml_collections(tmp_path):
  out = tmp_path / 'rows.jsonl'
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')  # one CPU device, as the benchmark runs
  run = subprocess.run([sys.executable, '-c', _SMOKE, '--smoke', '--huge_pages=0', f'--json_out={out}'],
                       capture_output=True, text=True, timeout=600, cwd=REPO_ROOT, env=env)
  assert run.returncode == 0, run.stderr[-3000:]
  rows = {r['phase']: r for r in map(json.loads, out.read_text().splitlines())}
  assert list(rows) == ['eval_b1', 'eval_b2', 'host', 'train']
  for phase, r in rows.items():
    assert r['canvas'] == '96x96' and r['model'] == 'maskrcnn_hatnet_tiny' and r['smoke'], phase
    assert len(r['s_all']) == 1 and r['images_per_s'] == pytest.approx(r['batch'] / r['s_all'][0]), phase
    assert r['peak_rss_gib'] > 0.1 and 0 <= r['step_rss_gib'] <= r['peak_rss_gib'], phase
    assert r['compile_s'] > 0 or phase == 'host', phase
  assert rows['train']['batch'] == 2 and np.isfinite(rows['train']['loss'])
  assert 5 <= rows['train']['gt_per_image'] <= 10 and rows['train']['rcnn_positives_per_image'] > 0
  assert rows['eval_b1']['gflops_per_image'] > 0 and rows['eval_b2']['batch'] == 2
  for phase in ('eval_b1', 'eval_b2'):  # the hot classes fill every image's 100 detections
    assert rows[phase]['detections_per_image'] == 100 and rows[phase]['xla_temp_gib'] > 0
  assert rows['host']['host_rle'] and rows['host']['rles_per_image'] == 100 and rows['host']['from_eval_batch'] == 2
  assert '| train | 2 |' in run.stdout and '| host | 2 |' in run.stdout
