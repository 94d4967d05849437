"""Detection end to end through main.py on digit boxes (configs/retinanet_digits.py:tiny: RetinaNet on a tiny
HAT-Net, 8 steps on 96 scenes, eval every 4 steps on 40 test scenes in batches of 16, so the last batch is
padded): checkpoints, COCO AP in TensorBoard and run.json, per-class AP, panels, eval mode; the results JSON
scored the classic pycocotools way (annotation file, loadRes, COCOeval) equals the logged AP; SIGKILL +
restart bitwise equal to the uninterrupted run; 2 processes x 4 devices evaluate as 1 process x 8.

Every run passes --config.detection.score_thr=0.0: after 8 steps the scores sit near the focal prior (0.01),
below the default 0.05, and no detection at all would make every AP trivially 0.
"""
import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from tests.training import test_train_e2e as e2e

# Slow: the fixture trains and evaluates RetinaNet in a subprocess (~2 min here), which the default suite's
# 15-minute budget no longer holds; the detection loss, pipeline and predict tests stay in it.
pytestmark = pytest.mark.slow

DET_TINY = os.path.join(e2e.REPO, 'configs', 'retinanet_digits.py') + ':tiny'
NUM_STEPS = 8
NUM_TEST = 40
MAX_PER_IMG = 100
AP_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')
STAT_NAMES = AP_NAMES + ('AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')  # COCOeval.stats in order


@pytest.fixture(scope='module')
def shared(tmp_path_factory):
  root = tmp_path_factory.mktemp('det_e2e')
  return {'data_dir': str(root / 'tfds'), 'cache': str(root / 'jax_cache'), 'root': root}


def _cmd(shared, workdir, *flags):
  return e2e._cmd(shared, workdir)[:2] + [f'--config={DET_TINY}', f'--workdir={workdir}',
                                          f'--config.data.data_dir={shared["data_dir"]}',
                                          '--config.detection.score_thr=0.0', *flags]


def _run(shared, workdir, *flags):
  out = subprocess.run(_cmd(shared, workdir, *flags), env=e2e._env(shared, 8), cwd=e2e.REPO, capture_output=True,
                       text=True, timeout=e2e.RUN_TIMEOUT)
  assert out.returncode == 0, out.stderr[-5000:]
  return out.stderr


def _copy_checkpoint(src_workdir, workdir, step):
  shutil.copytree(os.path.join(src_workdir, 'checkpoints', str(step)), os.path.join(workdir, 'checkpoints', str(step)))
  return workdir


def _detections(workdir, step=NUM_STEPS):
  with open(os.path.join(workdir, 'eval', f'detections_{step}.json')) as f:
    return json.load(f)


def _describe(scalars, step):
  """The task's summary line as the loop logs it (COCOeval's -1 -> 'n/a')."""
  ap = ', '.join(f'{k} {100 * scalars[f"eval_{k}"][step]:.1f}' if scalars[f'eval_{k}'][step] >= 0 else f'{k} n/a'
                 for k in AP_NAMES)
  return f'box {ap} over {NUM_TEST} images'


@pytest.fixture(scope='module')
def reference(shared):
  """The uninterrupted run: workdir, log, and its events, run.json and step-8 results read right away."""
  workdir = str(shared['root'] / 'reference')
  log = _run(shared, workdir)
  scalars, tags = e2e._events(workdir)
  with open(os.path.join(workdir, 'run.json')) as f:
    record = json.load(f)
  return {'workdir': workdir, 'log': log, 'scalars': scalars, 'tags': tags, 'record': record,
          'detections': _detections(workdir)}


@pytest.fixture(scope='module')
def evaluated(reference, shared):
  """--config.mode=eval of the reference's step-8 checkpoint, 1 process x 8 devices, in its own workdir."""
  workdir = _copy_checkpoint(reference['workdir'], str(shared['root'] / 'eval_1x8'), NUM_STEPS)
  log = _run(shared, workdir, '--config.mode=eval')
  return {'workdir': workdir, 'log': log, 'scalars': e2e._events(workdir)[0], 'detections': _detections(workdir)}


def test_trains_evaluates_and_reports_ap(reference, evaluated):
  workdir, scalars, tags, record = reference['workdir'], reference['scalars'], reference['tags'], reference['record']
  assert e2e._steps(workdir) == [4, 8]
  for name in AP_NAMES:
    assert sorted(scalars[f'eval_{name}']) == [4, 8], name
  assert 0.0 <= scalars['eval_AP'][8] <= scalars['eval_AP50'][8] <= 1.0
  for name in ('train_loss', 'train_loss_focal', 'train_loss_l1', 'learning_rate'):
    assert sorted(scalars[name]) == list(range(1, NUM_STEPS + 1)), name
    assert all(np.isfinite(v) for v in scalars[name].values()), name
  np.testing.assert_allclose(scalars['train_loss'][8], scalars['train_loss_focal'][8] + scalars['train_loss_l1'][8],
                             rtol=1e-5)
  per_class = [k for k in scalars if k.startswith('eval_class_AP/')]
  assert per_class and all(k[len('eval_class_AP/'):][:4] in {f'{i:03d}_' for i in range(10)} for k in per_class)
  assert all(sorted(scalars[k]) == [4, 8] for k in per_class)
  assert {'eval_per_class_AP', 'eval_truth_prediction'} <= tags
  assert record['status'] == 'finished' and record['step'] == NUM_STEPS and record['task'] == 'detection'
  assert record['best']['metric'] == 'eval_AP'
  assert f'Evaluation at step 8: {_describe(scalars, 8)}' in reference['log']

  # Eval mode restores step 8 and reports the same AP (the same float64 numbers, so the same float32 events).
  assert f'Evaluation of step 8: {_describe(scalars, 8)}' in evaluated['log']
  for name in STAT_NAMES:
    assert evaluated['scalars'][f'eval_{name}'] == {8: scalars[f'eval_{name}'][8]}, name
  assert evaluated['detections'] == reference['detections']


def _ground_truth_file(path, data_dir):
  """The test split's ground truth (sources.ground_truth) as a COCO annotation file, written here by hand:
  xyxy -> xywh (w = x2 - x1), categories from dataset_info, annotation ids 1..N. Returns (path, info)."""
  from configs import retinanet_digits  # pylint: disable=g-import-not-at-top
  from hatnet_jax.data.detection import sources  # pylint: disable=g-import-not-at-top
  d = retinanet_digits.get_config('tiny').data
  d.data_dir = data_dir
  info = sources.dataset_info(d)
  images, annotations = [], []
  for record in sources.ground_truth(d, info.eval_split):
    height, width = record['orig_size']
    images.append({'id': record['image_id'], 'height': height, 'width': width})
    for box, label, crowd, area in zip(np.asarray(record['boxes'], np.float64).tolist(), record['labels'].tolist(),
                                       record['is_crowd'].tolist(), record['area'].tolist()):
      x1, y1, x2, y2 = box
      annotations.append({'id': len(annotations) + 1, 'image_id': record['image_id'],
                          'category_id': info.category_ids[label], 'bbox': [x1, y1, x2 - x1, y2 - y1],
                          'area': float(area), 'iscrowd': int(crowd)})
  categories = [{'id': c, 'name': n} for c, n in zip(info.category_ids, info.class_names)]
  with open(path, 'w') as f:
    json.dump({'images': images, 'annotations': annotations, 'categories': categories}, f)
  return path, info


def _cocoeval(gt_file, results):
  """COCOeval(bbox) with pycocotools' defaults on a results file: (stats [12], precision [T, R, K, A, M])."""
  from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
  from pycocotools.cocoeval import COCOeval  # pylint: disable=g-import-not-at-top
  gt = COCO(gt_file)
  evaluator = COCOeval(gt, gt.loadRes(results), iouType='bbox')
  evaluator.evaluate()
  evaluator.accumulate()
  evaluator.summarize()
  return np.asarray(evaluator.stats, np.float64), evaluator.eval['precision']


def test_results_json_scored_the_classic_way_gives_the_logged_ap(reference, shared, tmp_path):
  pytest.importorskip('pycocotools')
  results_file = os.path.join(reference['workdir'], 'eval', f'detections_{NUM_STEPS}.json')
  gt_file, info = _ground_truth_file(str(tmp_path / 'instances_test.json'), shared['data_dir'])
  with open(gt_file) as f:
    gt = json.load(f)
  sizes = {im['id']: (im['height'], im['width']) for im in gt['images']}
  assert len(sizes) == NUM_TEST

  results = reference['detections']
  per_image = {}
  for r in results:
    per_image[r['image_id']] = per_image.get(r['image_id'], 0) + 1
  assert set(per_image) <= set(sizes), sorted(set(per_image) - set(sizes))
  assert max(per_image.values()) <= MAX_PER_IMG
  assert {r['category_id'] for r in results} <= set(info.category_ids)
  for r in results:  # boxes clipped to the image (scale 1: the scenes are used at their own size)
    x, y, w, h = r['bbox']
    height, width = sizes[r['image_id']]
    assert 0 <= r['score'] <= 1 and w >= 0 and h >= 0
    assert x >= 0 and y >= 0 and x + w <= width + 1e-3 and y + h <= height + 1e-3, r

  stats, precision = _cocoeval(gt_file, results_file)
  assert stats[0] > 0, 'AP is 0: the check below would not tell a right evaluation from a wrong one'
  logged, final = reference['scalars'], reference['record']['final_metrics']
  for name, value in zip(STAT_NAMES, stats):
    assert logged[f'eval_{name}'][8] == pytest.approx(value, rel=1e-6, abs=1e-9), name  # float32 events
    assert final[f'eval_{name}'] == pytest.approx(value, rel=1e-12, abs=1e-15), name  # run.json: float64
  for k, (category, name) in enumerate(zip(info.category_ids, info.class_names)):  # mmdet's class-wise AP
    values = precision[:, :, sorted(info.category_ids).index(category), 0, -1]
    values = values[values > -1]
    tag = f'eval_class_AP/{k:03d}_{name}'
    if values.size:
      assert logged[tag][8] == pytest.approx(float(np.mean(values)), rel=1e-6, abs=1e-9), tag
    else:
      assert tag not in logged

  # The comparison can fail: the same detections moved by 2 px score differently.
  moved = [dict(r, bbox=[r['bbox'][0] + 2] + r['bbox'][1:]) for r in results]
  assert not np.array_equal(_cocoeval(gt_file, moved)[0], stats)


@pytest.mark.slow
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


def _evaluate_in_two_processes(shared, workdir, *flags):
  """--config.mode=eval in 2 processes x 4 devices (jax.distributed on 127.0.0.1); returns both logs."""
  address = f'127.0.0.1:{e2e._free_port()}'
  procs = [subprocess.Popen(_cmd(shared, workdir, '--config.mode=eval', f'--coordinator_address={address}',
                                 '--num_processes=2', f'--process_id={i}', *flags),
                            env=e2e._env(shared, 4), cwd=e2e.REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    logs = [p.communicate(timeout=e2e.RUN_TIMEOUT)[1] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for i, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, f'process {i}:\n{log[-5000:]}'
  assert 'JAX process 1/2' in logs[1] and '8 global devices' in logs[0]
  return logs


def _assert_same_detections(results, expected, atol=1e-5):
  """The same set of (image_id, category, box, score) up to `atol`: per (image, category) the same count, and
  each detection of either side has one on the other within atol in score and every box coordinate."""
  def groups(rows):
    out = {}
    for r in rows:
      out.setdefault((r['image_id'], r['category_id']), []).append([r['score'], *r['bbox']])
    return {k: np.asarray(v, np.float64) for k, v in out.items()}

  got, want = groups(results), groups(expected)
  assert sorted(got) == sorted(want)
  for key, a in got.items():
    b = want[key]
    assert len(a) == len(b), key
    close = np.abs(a[:, None, :] - b[None, :, :]).max(-1) <= atol  # [n, n]: detection i ~ detection j
    assert close.any(1).all() and close.any(0).all(), (key, a, b)


@pytest.mark.slow  # two processes start, restore and compile (~1 min here)
def test_two_processes_evaluate_as_one(evaluated, reference, shared):
  """The same detections (each eval image once, from the process that holds its rows) and the same AP."""
  workdir = _copy_checkpoint(reference['workdir'], str(shared['root'] / 'eval_2x4'), NUM_STEPS)
  logs = _evaluate_in_two_processes(shared, workdir, '--config.log_images_count=0')
  one, two = evaluated['scalars'], e2e._events(workdir)[0]
  for log in logs:  # every process finalises the whole evaluation
    assert f'Evaluation of step 8: {_describe(one, 8)}' in log
  two_detections = _detections(workdir)
  assert len(two_detections) == len(evaluated['detections'])
  _assert_same_detections(two_detections, evaluated['detections'])
  for name in STAT_NAMES:
    assert two[f'eval_{name}'][8] == pytest.approx(one[f'eval_{name}'][8], rel=1e-6, abs=1e-9), name


@pytest.mark.slow  # two processes (~1 min here)
def test_two_processes_write_the_prediction_panels(reference, shared):
  """With pictures on (the config's log_images_count=2) the panels' predict is a program over all 8 devices:
  every process must run it, not process 0 alone."""
  workdir = _copy_checkpoint(reference['workdir'], str(shared['root'] / 'eval_2x4_panels'), NUM_STEPS)
  _evaluate_in_two_processes(shared, workdir)
  assert 'eval_truth_prediction' in e2e._events(workdir)[1]
