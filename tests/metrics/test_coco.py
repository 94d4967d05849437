"""COCO box AP: our in-memory ground truth + results give exactly what pycocotools gives run the classic way
(annotation and result JSON files), the results format round-trips through loadRes, per-class AP matches a
hand-checked case, no detections give AP 0, and (where mmdet imports) mmdet's CocoMetric agrees."""
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from hatnet_jax.metrics import coco

CATEGORY_IDS = [7, 1, 12, 3]  # not contiguous (as COCO's) and not sorted: label k -> CATEGORY_IDS[k]
NAMES = ['cat', 'dog', 'kite', 'boat']  # 'boat' (label 3) has detections but no ground truth
SIDES = {'small': (6, 30), 'medium': (34, 90), 'large': (100, 190)}


def _scene(seed=0, max_dets=120):
  """Six images of COCO-like ground truth (xywh on a quarter-pixel grid, so xywh -> xyxy -> xywh is exact)
  and padded detections [N, D] around them: jittered hits, wrong classes, duplicates, boxes on crowd
  regions, false positives, scores on a 0.01 grid (ties), one image with more than 100 detections.

  Returns (coco_json, records, image_ids, boxes, scores, labels, valid).
  """
  rng = np.random.RandomState(seed)
  image_ids = [5, 8, 13, 21, 34, 42]
  images, annotations, records = [], [], []
  boxes = np.zeros((len(image_ids), max_dets, 4), np.float32)
  scores = np.zeros((len(image_ids), max_dets), np.float32)
  labels = np.zeros((len(image_ids), max_dets), np.int32)
  valid = np.zeros((len(image_ids), max_dets), bool)
  for i, image_id in enumerate(image_ids):
    height, width = rng.randint(220, 480, size=2)
    images.append({'id': image_id, 'height': int(height), 'width': int(width), 'file_name': f'{image_id}.jpg'})
    gts = []
    for j in range(0 if image_id == 13 else rng.randint(3, 9)):
      lo, hi = SIDES[['small', 'medium', 'large'][j % 3]]
      w, h = rng.randint(lo * 4, hi * 4, size=2) / 4
      x, y = rng.randint(0, int((width - w) * 4)) / 4, rng.randint(0, int((height - h) * 4)) / 4
      label, crowd = rng.randint(0, 3), int(j == 5 or (image_id == 42 and j == 2))
      area = float(w * h * rng.uniform(0.55, 1.0))  # a mask's area: less than its box's
      gts.append((x, y, w, h, label, crowd, area))
      annotations.append({'id': len(annotations) + 1, 'image_id': image_id, 'category_id': CATEGORY_IDS[label],
                          'bbox': [x, y, w, h], 'area': area, 'iscrowd': crowd, 'segmentation': []})
    gt = np.array(gts, np.float64).reshape(-1, 7)
    records.append({'image_id': image_id, 'orig_size': (height, width),
                    'boxes': np.concatenate([gt[:, :2], gt[:, :2] + gt[:, 2:4]], axis=1),
                    'labels': gt[:, 4].astype(np.int64), 'is_crowd': gt[:, 5].astype(np.int64), 'area': gt[:, 6]})
    dets = []
    for x, y, w, h, label, _, _ in gts:
      for _ in range(rng.randint(1, 4)):  # hits of varying quality, sometimes the wrong class
        jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
        dets.append(([x, y, x + w, y + h] + jitter, label if rng.rand() < 0.8 else rng.randint(0, 4)))
    count = max_dets if image_id == 21 else rng.randint(len(dets), len(dets) + 12)
    while len(dets) < count:  # false positives, every class
      x, y = rng.uniform(0, width - 40), rng.uniform(0, height - 40)
      dets.append(([x, y, x + rng.uniform(5, 150), y + rng.uniform(5, 150)], rng.randint(0, 4)))
    dets = dets[:max_dets]
    boxes[i, :len(dets)] = np.reshape([d[0] for d in dets], (-1, 4))
    labels[i, :len(dets)] = [d[1] for d in dets]
    scores[i, :len(dets)] = np.round(rng.uniform(0.05, 1.0, len(dets)), 2)
    valid[i, :len(dets)] = True
  categories = [{'id': c, 'name': n} for c, n in zip(CATEGORY_IDS, NAMES)]
  coco_json = {'images': images, 'annotations': annotations, 'categories': categories}
  return coco_json, records, np.array(image_ids), boxes, scores, labels, valid


def _classic(gt_json, results, tmp_path):
  """pycocotools as its README runs it: the annotation file, loadRes of the results file, evaluate."""
  gt_file, res_file = tmp_path / 'gt.json', tmp_path / 'results.json'
  gt_file.write_text(json.dumps(gt_json))
  res_file.write_text(json.dumps(results))
  gt = COCO(str(gt_file))
  evaluator = COCOeval(gt, gt.loadRes(str(res_file)), 'bbox')
  evaluator.evaluate()
  evaluator.accumulate()
  evaluator.summarize()
  return evaluator


def test_evaluate_boxes_equals_pycocotools_from_files(tmp_path):
  gt_json, records, image_ids, boxes, scores, labels, valid = _scene()
  assert valid.sum(axis=1).max() > 100 and len(np.unique(scores[valid])) < valid.sum()  # maxDets, ties
  results = coco.detections_to_results(image_ids, boxes, scores, labels, valid, CATEGORY_IDS)
  ours = coco.evaluate_boxes(coco.ground_truth_coco(records, CATEGORY_IDS, NAMES), results, NAMES)
  classic = _classic(gt_json, results, tmp_path)

  assert [ours[name] for name in coco.STAT_NAMES] == classic.stats.tolist()
  assert all(0.02 < ours[name] < 0.98 for name in coco.STAT_NAMES)  # every area range has ground truth
  precision = classic.eval['precision']
  expected = [np.mean(p[p > -1]) if np.any(p > -1) else np.nan
              for p in (precision[:, :, classic.params.catIds.index(c), 0, -1] for c in CATEGORY_IDS)]
  np.testing.assert_array_equal(ours['per_class_AP'], expected)
  assert np.isnan(ours['per_class_AP'][3]) and np.all(ours['per_class_AP'][:3] > 0)
  assert ours['summary'].count('Average Precision') == 6 and ours['summary'].count('Average Recall') == 6


def test_ground_truth_matches_the_annotation_file_for_what_cocoeval_reads():
  gt_json, records, *_ = _scene()
  gt = coco.ground_truth_coco(records, CATEGORY_IDS, NAMES)
  fields = ('id', 'image_id', 'category_id', 'bbox', 'area', 'iscrowd')
  assert [{k: a[k] for k in fields} for a in gt.dataset['annotations']] == \
         [{k: a[k] for k in fields} for a in gt_json['annotations']]
  assert sorted(gt.getImgIds()) == sorted(i['id'] for i in gt_json['images'])
  assert [c['id'] for c in gt.dataset['categories']] == CATEGORY_IDS
  assert any(a['iscrowd'] for a in gt.dataset['annotations'])


def test_results_are_mmdet_format_and_round_trip_through_load_res(tmp_path):
  _, records, image_ids, boxes, scores, labels, valid = _scene(seed=1)
  results = coco.detections_to_results(image_ids, boxes, scores, labels, valid, CATEGORY_IDS)
  expected = []  # mmdet 3.3's results2json: per image, per detection, xyxy2xywh of the float32 values
  for n, image_id in enumerate(image_ids):
    for d in np.flatnonzero(valid[n]):
      b = boxes[n, d].tolist()
      expected.append({'image_id': int(image_id), 'category_id': CATEGORY_IDS[labels[n, d]],
                       'bbox': [b[0], b[1], b[2] - b[0], b[3] - b[1]], 'score': float(scores[n, d])})
  assert results == expected
  assert {type(v) for r in results for v in (r['image_id'], r['category_id'])} == {int}
  assert {type(v) for r in results for v in r['bbox'] + [r['score']]} == {float}

  path = tmp_path / 'deep' / 'er' / 'bbox.json'
  coco.write_results_json(str(path), results)
  assert json.loads(path.read_text()) == results and [p.name for p in path.parent.iterdir()] == ['bbox.json']
  loaded = coco.ground_truth_coco(records, CATEGORY_IDS, NAMES).loadRes(str(path))
  for result, ann in zip(results, loaded.loadAnns(loaded.getAnnIds())):
    assert {k: ann[k] for k in result} == result


def _one_box_records():
  """Hand-checked split: cat (label 0) two boxes, dog (label 1) one box, kite (2) and boat (3) none."""
  return [{'image_id': 1, 'orig_size': (200, 200), 'boxes': [[10, 10, 60, 60], [100, 100, 150, 180]],
           'labels': [0, 0], 'is_crowd': [0, 0], 'area': [2500, 4000]},
          {'image_id': 2, 'orig_size': (200, 200), 'boxes': [[20, 30, 90, 70], [0, 0, 40, 40]],
           'labels': [1, 2], 'is_crowd': [0, 1], 'area': [2800, 1600]}]


def test_per_class_ap_hand_checked():
  gt = coco.ground_truth_coco(_one_box_records(), CATEGORY_IDS, NAMES)
  boxes = np.array([[[10, 10, 60, 60], [100, 100, 150, 180], [0, 0, 1, 1]],
                    [[150, 150, 190, 190], [0, 0, 40, 40], [5, 5, 30, 30]]], np.float32)
  scores = np.array([[0.9, 0.8, 0.0], [0.7, 0.6, 0.5]], np.float32)
  labels = np.array([[0, 0, 0], [3, 2, 2]])
  valid = np.array([[1, 1, 0], [1, 1, 1]], bool)
  results = coco.detections_to_results([1, 2], boxes, scores, labels, valid, CATEGORY_IDS)
  out = coco.evaluate_boxes(gt, results, NAMES)
  # cat: both boxes found first -> precision 1 at every recall: AP 1. dog: never detected: AP 0. kite: its
  # only box is a crowd (ignored), detections on it are ignored, nothing to find: nan. boat: no ground truth.
  np.testing.assert_array_equal(out['per_class_AP'], [1.0, 0.0, np.nan, np.nan])
  assert out['AP'] == pytest.approx(0.5) and out['AP50'] == pytest.approx(0.5)

  # cat again, a false positive scored first: precision 1/2 at recall 1/2 and 2/3 at recall 1, so the
  # interpolated precision is 2/3 at every recall threshold: AP 2/3.
  boxes[0, 2], scores[0, 2], valid[0, 2] = [160, 10, 190, 40], 0.95, True
  results = coco.detections_to_results([1, 2], boxes, scores, labels, valid, CATEGORY_IDS)
  assert coco.evaluate_boxes(gt, results, NAMES)['per_class_AP'][0] == pytest.approx(2 / 3)


def test_no_detections_give_zero_ap():
  gt = coco.ground_truth_coco(_one_box_records(), CATEGORY_IDS, NAMES)
  empty = coco.detections_to_results([1, 2], np.zeros((2, 3, 4)), np.zeros((2, 3)), np.zeros((2, 3), int),
                                     np.zeros((2, 3), bool), CATEGORY_IDS)
  assert empty == []
  out = coco.evaluate_boxes(gt, empty, NAMES)
  assert out['AP'] == 0.0 and out['AR100'] == 0.0 and out['APs'] == -1.0  # no small non-crowd ground truth
  np.testing.assert_array_equal(out['per_class_AP'], [0.0, 0.0, np.nan, np.nan])


def test_bad_input_is_named():
  records = _one_box_records()
  with pytest.raises(ValueError, match='category_ids'):
    coco.ground_truth_coco(records, CATEGORY_IDS[:3], NAMES)
  with pytest.raises(ValueError, match='appears twice'):
    coco.ground_truth_coco(records + records[:1], CATEGORY_IDS, NAMES)
  with pytest.raises(ValueError, match='lacks'):
    coco.ground_truth_coco([{'image_id': 3}], CATEGORY_IDS, NAMES)
  with pytest.raises(ValueError, match='outside 0..3'):
    coco.detections_to_results([1], np.zeros((1, 1, 4)), np.ones((1, 1)), np.full((1, 1), 4), np.ones((1, 1)),
                               CATEGORY_IDS)
  gt = coco.ground_truth_coco(records, CATEGORY_IDS, NAMES)
  with pytest.raises(ValueError, match='image ids that the ground truth lacks'):
    coco.evaluate_boxes(gt, [{'image_id': 99, 'category_id': 1, 'bbox': [0, 0, 1, 1], 'score': 1.0}], NAMES)


def test_faster_coco_eval_is_not_what_runs():
  """The official pycocotools evaluates (faster-coco-eval would patch or replace it where installed)."""
  assert coco.COCOeval.__module__ == 'pycocotools.cocoeval' and coco.COCO.__module__ == 'pycocotools.coco'


def _mmdet_coco_metric():
  from tests.references import mmseg_stub  # pylint: disable=g-import-not-at-top
  mmseg_stub.install()
  try:
    from mmdet.evaluation.metrics import CocoMetric  # pylint: disable=g-import-not-at-top
  except ImportError as e:  # mmdet absent, or a dependency of its import (e.g. matplotlib) missing
    pytest.skip(f'mmdet CocoMetric not importable: {e}')
  return CocoMetric


def test_agrees_with_mmdet_coco_metric():
  """mmdet 3.3's CocoMetric without an annotation file (it builds one from the instances: area = w * h,
  category ids = label) and at most 100 detections per image (mmdet evaluates maxDets 100/300/1000)."""
  torch = pytest.importorskip('torch')
  coco_metric = _mmdet_coco_metric()
  _, records, image_ids, boxes, scores, labels, valid = _scene(seed=2, max_dets=100)
  for r in records:
    r['area'] = np.prod(r['boxes'][:, 2:] - r['boxes'][:, :2], axis=1)
  metric = coco_metric(metric='bbox', classwise=True)
  metric.dataset_meta = {'classes': NAMES}
  samples = []
  for n, r in enumerate(records):
    keep = valid[n]
    samples.append({'img_id': int(r['image_id']), 'ori_shape': tuple(int(s) for s in r['orig_size']),
                    'pred_instances': {'bboxes': torch.from_numpy(boxes[n][keep]),
                                       'scores': torch.from_numpy(scores[n][keep]),
                                       'labels': torch.from_numpy(labels[n][keep].astype(np.int64))},
                    'instances': [{'bbox': b.tolist(), 'bbox_label': int(l), 'ignore_flag': int(c)}
                                  for b, l, c in zip(r['boxes'], r['labels'], r['is_crowd'])]})
  metric.process({}, samples)
  theirs = metric.compute_metrics(metric.results)

  category_ids = list(range(len(NAMES)))
  results = coco.detections_to_results(image_ids, boxes, scores, labels, valid, category_ids)
  ours = coco.evaluate_boxes(coco.ground_truth_coco(records, category_ids, NAMES), results, NAMES)
  mmdet_names = {'AP': 'mAP', 'AP50': 'mAP_50', 'AP75': 'mAP_75', 'APs': 'mAP_s', 'APm': 'mAP_m', 'APl': 'mAP_l'}
  for ours_name, their_name in mmdet_names.items():  # mmdet rounds to 3 decimals
    assert float(f'{round(ours[ours_name], 3)}') == theirs[f'bbox_{their_name}'], ours_name
  for name, ap in zip(NAMES, ours['per_class_AP']):
    assert (np.isnan(ap) and np.isnan(theirs[f'{name}_precision'])) or \
           round(ap, 3) == theirs[f'{name}_precision'], name
