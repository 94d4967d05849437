"""Instance segmentation end to end through main.py on digit scenes with instance masks
(configs/maskrcnn_digits.py:tiny: Mask R-CNN on a tiny HAT-Net, 8 steps on 96 scenes, eval every 4 steps on 40
test scenes in batches of 16): checkpoints, box and mask AP in TensorBoard and run.json, per-class AP, pictures;
the results JSON (boxes and RLE masks) scored the classic pycocotools way equals the logged box and mask AP;
SIGKILL + restart bitwise equal to the uninterrupted run.

Slow (each run compiles the two-stage train and eval programs: ~2-3 min here). Every run passes
--config.detection.score_thr=0.0: after 8 steps the class scores are near uniform (~0.09 for 11 classes) and a
threshold would leave few detections to score.
"""
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from tests.tasks import test_detection_e2e as det_e2e
from tests.training import test_train_e2e as e2e

pytestmark = pytest.mark.slow

TINY = os.path.join(e2e.REPO, 'configs', 'maskrcnn_digits.py') + ':tiny'
NUM_STEPS = 8
NUM_TEST = 40
AP_NAMES = det_e2e.AP_NAMES
STAT_NAMES = det_e2e.STAT_NAMES


@pytest.fixture(scope='module')
def shared(tmp_path_factory):
  root = tmp_path_factory.mktemp('maskrcnn_e2e')
  return {'data_dir': str(root / 'tfds'), 'cache': str(root / 'jax_cache'), 'root': root}


def _cmd(shared, workdir, *flags):
  return e2e._cmd(shared, workdir)[:2] + [f'--config={TINY}', f'--workdir={workdir}',
                                          f'--config.data.data_dir={shared["data_dir"]}',
                                          '--config.detection.score_thr=0.0', *flags]


def _run(shared, workdir, *flags):
  out = subprocess.run(_cmd(shared, workdir, *flags), env=e2e._env(shared, 8), cwd=e2e.REPO, capture_output=True,
                       text=True, timeout=e2e.RUN_TIMEOUT)
  assert out.returncode == 0, out.stderr[-5000:]
  return out.stderr


@pytest.fixture(scope='module')
def reference(shared):
  workdir = str(shared['root'] / 'reference')
  log = _run(shared, workdir)
  scalars, tags = e2e._events(workdir)
  with open(os.path.join(workdir, 'run.json')) as f:
    record = json.load(f)
  with open(os.path.join(workdir, 'eval', f'detections_{NUM_STEPS}.json')) as f:
    results = json.load(f)
  return {'workdir': workdir, 'log': log, 'scalars': scalars, 'tags': tags, 'record': record, 'results': results}


def test_trains_evaluates_and_reports_box_and_mask_ap(reference):
  scalars, tags, record = reference['scalars'], reference['tags'], reference['record']
  assert e2e._steps(reference['workdir']) == [4, 8]
  for name in AP_NAMES:
    for prefix in ('eval_', 'eval_segm_'):
      assert sorted(scalars[prefix + name]) == [4, 8], prefix + name
  losses = ('train_loss_rpn_cls', 'train_loss_rpn_bbox', 'train_loss_cls', 'train_loss_bbox', 'train_loss_mask')
  for name in ('train_loss', 'learning_rate') + losses:
    assert sorted(scalars[name]) == list(range(1, NUM_STEPS + 1)), name
    assert all(np.isfinite(v) for v in scalars[name].values()), name
  np.testing.assert_allclose(scalars['train_loss'][8], sum(scalars[k][8] for k in losses), rtol=1e-5)
  # RoIs larger than the demo's 14 x 14 window are counted (averaged over steps: a non-negative count).
  assert all(v >= 0 and np.isfinite(v) for v in scalars['train_roi_align_overflow'].values())
  assert any(k.startswith('eval_class_segm_AP/') for k in scalars)
  assert {'eval_per_class_AP', 'eval_truth_prediction'} <= tags
  assert record['status'] == 'finished' and record['task'] == 'instance_segmentation'
  assert record['best']['metric'] == 'eval_segm_AP'
  assert 'Evaluation at step 8: box AP' in reference['log'] and '; mask AP' in reference['log']


def _ground_truth_file(path, data_dir):
  """The test split's ground truth as a COCO annotation file with the records' masks (RLE)."""
  from configs import maskrcnn_digits  # pylint: disable=g-import-not-at-top
  from hatnet_jax.data.detection import sources  # pylint: disable=g-import-not-at-top
  d = maskrcnn_digits.get_config('tiny').data
  d.data_dir = data_dir
  info = sources.dataset_info(d)
  images, annotations = [], []
  for record in sources.ground_truth(d, info.eval_split):
    height, width = record['orig_size']
    images.append({'id': record['image_id'], 'height': height, 'width': width})
    for box, label, crowd, area, seg in zip(np.asarray(record['boxes'], np.float64).tolist(),
                                            record['labels'].tolist(), record['is_crowd'].tolist(),
                                            record['area'].tolist(), record['segmentation']):
      x1, y1, x2, y2 = box
      seg = json.loads(seg.decode() if isinstance(seg, bytes) else seg)
      annotations.append({'id': len(annotations) + 1, 'image_id': record['image_id'],
                          'category_id': info.category_ids[label], 'bbox': [x1, y1, x2 - x1, y2 - y1],
                          'area': float(area), 'iscrowd': int(crowd), 'segmentation': seg})
  categories = [{'id': c, 'name': n} for c, n in zip(info.category_ids, info.class_names)]
  with open(path, 'w') as f:
    json.dump({'images': images, 'annotations': annotations, 'categories': categories}, f)
  return path


def _cocoeval(gt_file, results, iou_type):
  from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
  from pycocotools.cocoeval import COCOeval  # pylint: disable=g-import-not-at-top
  gt = COCO(gt_file)
  if iou_type == 'segm':  # as mmdet's CocoMetric: a mask result's area is its mask's
    results = [{k: v for k, v in r.items() if k != 'bbox'} for r in results]
  evaluator = COCOeval(gt, gt.loadRes(results), iouType=iou_type)
  evaluator.evaluate()
  evaluator.accumulate()
  evaluator.summarize()
  return np.asarray(evaluator.stats, np.float64)


def test_results_json_scored_the_classic_way_gives_the_logged_box_and_mask_ap(reference, shared, tmp_path):
  pytest.importorskip('pycocotools')
  results = reference['results']
  assert results and all('segmentation' in r and 'counts' in r['segmentation'] for r in results)
  gt_file = _ground_truth_file(str(tmp_path / 'instances_test.json'), shared['data_dir'])
  logged, final = reference['scalars'], reference['record']['final_metrics']
  for iou_type, prefix in (('bbox', 'eval_'), ('segm', 'eval_segm_')):
    stats = _cocoeval(gt_file, results, iou_type)
    for name, value in zip(STAT_NAMES, stats):
      assert logged[prefix + name][8] == pytest.approx(value, rel=1e-6, abs=1e-9), prefix + name
      assert final[prefix + name] == pytest.approx(value, rel=1e-12, abs=1e-15), prefix + name


def test_sigkill_and_restart_gives_bitwise_the_uninterrupted_run(reference, shared, tmp_path):
  workdir = str(tmp_path / 'killed')
  proc = subprocess.Popen(_cmd(shared, workdir), env=e2e._env(shared, 8), cwd=e2e.REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + e2e.RUN_TIMEOUT
  while not e2e._steps(workdir) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = e2e._steps(workdir)
  assert killed_at and max(killed_at) < NUM_STEPS, killed_at
  log = _run(shared, workdir)
  assert f'Restored checkpoint at step {max(killed_at)}' in log
  e2e._assert_same_final_state(workdir, reference['workdir'], NUM_STEPS)
