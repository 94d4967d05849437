"""COCO mask AP: our in-memory ground truth (polygons, RLE, compressed RLE, crowd RLE from the records' JSON
text) + masks_to_rle results give exactly what pycocotools gives run the classic way (annotation and result
JSON files, COCOeval('segm')), per-class AP as mmdet's, the results JSON round-trips, images without
detections or with only crowd annotations, a hand-checked case, and (where mmdet imports) mmdet's CocoMetric
agrees."""
import json

import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from hatnet_jax.metrics import coco
from hatnet_jax.structures import mask_paste

CATEGORY_IDS = [7, 1, 12, 3]
NAMES = ['cat', 'dog', 'kite', 'boat']  # 'boat' (label 3) has detections but no ground truth


def _uncompressed_rle(mask):
  """COCO's uncompressed RLE (column-major runs, first of 0s), as the crowd annotations of COCO are."""
  flat = mask.T.reshape(-1).astype(np.int8)
  bounds = np.concatenate([[0], np.nonzero(np.diff(flat))[0] + 1, [flat.size]])
  counts = np.diff(bounds).tolist()
  return {'size': list(mask.shape), 'counts': ([0] if flat[0] else []) + [int(c) for c in counts]}


def _ellipse(rng, h, w, lo, hi):
  cy, cx = rng.uniform(0, h), rng.uniform(0, w)
  ry, rx = rng.uniform(lo, hi, 2) / 2
  yy, xx = np.mgrid[:h, :w] + 0.5
  return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1, (cx, cy, rx, ry)


def _gt_segmentation(rng, h, w, kind, size):
  """(segmentation as the annotation file holds it, its decoded mask) of one random ellipse-like object."""
  lo, hi = size
  mask, (cx, cy, rx, ry) = _ellipse(rng, h, w, lo, hi)
  if kind == 'polygon':  # a 12-gon, sometimes in two parts, decoded as pycocotools does
    t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    poly = np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1).round(2).reshape(-1).tolist()
    polys = [poly] if rng.random() < 0.7 else [poly, [cx + 3, cy - rx - 6, cx + 9, cy - rx - 6, cx + 6, cy - rx]]
    mask = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polys, h, w))).astype(bool)
    return polys, mask
  if kind == 'rle':
    return _uncompressed_rle(mask), mask
  rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
  return {'size': [h, w], 'counts': rle['counts'].decode()}, mask


def _shift(mask, dy, dx):
  out = np.zeros_like(mask)
  h, w = mask.shape
  out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = mask[max(-dy, 0):h - max(dy, 0),
                                                                  max(-dx, 0):w - max(dx, 0)]
  return out


def _scene(seed=0, max_dets=40):
  """Seven images: ground truth of every segmentation kind (polygons, uncompressed RLE, compressed RLE,
  crowd uncompressed RLE) in small / medium / large; image 13 has no ground truth, image 50 only a crowd
  region, image 8 no detections. Detections: each object found 1-3 times with shifted / grown masks,
  sometimes the wrong class, plus false positives; scores on a 0.01 grid (ties).

  Returns (coco_json, records, image_ids, boxes, scores, labels, valid, masks) with masks[n] bool
  [valid count, h, w]."""
  rng = np.random.default_rng(seed)
  image_ids = [5, 8, 13, 21, 34, 42, 50]
  images, annotations, records = [], [], []
  boxes = np.zeros((len(image_ids), max_dets, 4), np.float32)
  scores = np.zeros((len(image_ids), max_dets), np.float32)
  labels = np.zeros((len(image_ids), max_dets), np.int32)
  valid = np.zeros((len(image_ids), max_dets), bool)
  all_masks = []
  for i, image_id in enumerate(image_ids):
    h, w = (int(s) for s in rng.integers(130, 220, 2))
    images.append({'id': image_id, 'height': h, 'width': w, 'file_name': f'{image_id}.jpg'})
    count = {13: 0, 50: 1}.get(image_id, int(rng.integers(4, 9)))
    gt_masks, rec = [], {'image_id': image_id, 'orig_size': (h, w), 'boxes': [], 'labels': [], 'is_crowd': [],
                         'area': [], 'segmentation': []}
    for j in range(count):
      crowd = int(image_id == 50 or j == 5 or (image_id == 42 and j == 2))
      kind = 'rle' if crowd else ['polygon', 'rle', 'compressed'][j % 3]
      segm, mask = _gt_segmentation(rng, h, w, kind, [(6, 28), (40, 90), (110, 160)][j % 3])
      if not mask.any():
        continue
      label = int(rng.integers(0, 3))
      x, y, bw, bh = mask_util.toBbox(mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))).tolist()
      area = float(mask.sum())
      annotations.append({'id': len(annotations) + 1, 'image_id': image_id, 'category_id': CATEGORY_IDS[label],
                          'bbox': [x, y, bw, bh], 'area': area, 'iscrowd': crowd, 'segmentation': segm})
      for key, value in (('boxes', [x, y, x + bw, y + bh]), ('labels', label), ('is_crowd', crowd),
                         ('area', area), ('segmentation', json.dumps(segm))):
        rec[key].append(value)
      gt_masks.append((mask, label))
    records.append({k: (np.asarray(v, np.float64).reshape(-1, 4) if k == 'boxes' else
                        v if k == 'segmentation' else np.asarray(v)) for k, v in rec.items()})
    dets = []
    for mask, label in gt_masks:
      for _ in range(int(rng.integers(1, 4))):
        reach = max(2, int(np.sqrt(mask.sum()) / 4))  # IoUs spread over 0.5..0.95 at every size
        m = _shift(mask, *(int(v) for v in rng.integers(-reach, reach + 1, 2)))
        if rng.random() < 0.4:
          m |= _shift(m, 2, 2)
        dets.append((m, label if rng.random() < 0.8 else int(rng.integers(0, 4))))
    while len(dets) < len(gt_masks) * 2 + 3:  # false positives, every class
      dets.append((_ellipse(rng, h, w, 5, 80)[0], int(rng.integers(0, 4))))
    dets = [] if image_id == 8 else [d for d in dets if d[0].any()][:max_dets]
    masks = np.array([d[0] for d in dets], bool).reshape(-1, h, w)
    for d, m in enumerate(masks):
      ys, xs = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
      boxes[i, d] = [xs[0], ys[0], xs[-1] + 1, ys[-1] + 1] + rng.normal(0, 1.5, 4)
    labels[i, :len(dets)] = [d[1] for d in dets]
    scores[i, :len(dets)] = np.round(rng.uniform(0.05, 1.0, len(dets)), 2)
    valid[i, :len(dets)] = True
    all_masks.append(masks)
  categories = [{'id': c, 'name': n} for c, n in zip(CATEGORY_IDS, NAMES)]
  coco_json = {'images': images, 'annotations': annotations, 'categories': categories}
  return coco_json, records, np.array(image_ids), boxes, scores, labels, valid, all_masks


def _results(scene):
  _, _, image_ids, boxes, scores, labels, valid, masks = scene
  return coco.detections_to_results(image_ids, boxes, scores, labels, valid, CATEGORY_IDS,
                                    rles=[coco.masks_to_rle(m) for m in masks])


def _classic(gt_json, results, tmp_path):
  """pycocotools as its README runs it, on the results as mmdet's CocoMetric evaluates them ('bbox' popped)."""
  gt_file, res_file = tmp_path / 'gt.json', tmp_path / 'segm.json'
  gt_file.write_text(json.dumps(gt_json))
  res_file.write_text(json.dumps([{k: v for k, v in r.items() if k != 'bbox'} for r in results]))
  gt = COCO(str(gt_file))
  evaluator = COCOeval(gt, gt.loadRes(str(res_file)), 'segm')
  evaluator.evaluate()
  evaluator.accumulate()
  evaluator.summarize()
  return evaluator


def test_evaluate_segm_equals_pycocotools_from_files(tmp_path):
  scene = _scene()
  gt_json, records = scene[:2]
  kinds = {type(a['segmentation']['counts']).__name__ if isinstance(a['segmentation'], dict) else 'polygon'
           for a in gt_json['annotations']}
  assert kinds == {'polygon', 'list', 'str'} and any(a['iscrowd'] for a in gt_json['annotations'])
  results = _results(scene)
  ours = coco.evaluate_segm(coco.ground_truth_coco(records, CATEGORY_IDS, NAMES), results, NAMES)
  classic = _classic(gt_json, results, tmp_path)

  assert [ours[f'segm_{name}'] for name in coco.STAT_NAMES] == classic.stats.tolist()
  assert all(0.02 < ours[f'segm_{name}'] < 0.98 for name in coco.STAT_NAMES)  # every area range has ground truth
  precision = classic.eval['precision']
  expected = [np.mean(p[p > -1]) if np.any(p > -1) else np.nan  # mmdet's classwise AP
              for p in (precision[:, :, classic.params.catIds.index(c), 0, -1] for c in CATEGORY_IDS)]
  np.testing.assert_array_equal(ours['segm_per_class_AP'], expected)
  assert np.isnan(ours['segm_per_class_AP'][3]) and np.all(ours['segm_per_class_AP'][:3] > 0)
  assert ours['segm_summary'].count('Average Precision') == 6
  assert set(ours) == {f'segm_{k}' for k in coco.STAT_NAMES + ('per_class_AP', 'summary')}

  # The same results still give box AP, unchanged by their segmentations; mask AP differs from it.
  boxes_only = [{k: v for k, v in r.items() if k != 'segmentation'} for r in results]
  gt = coco.ground_truth_coco(records, CATEGORY_IDS, NAMES)
  assert coco.evaluate_boxes(gt, results, NAMES)['AP'] == coco.evaluate_boxes(gt, boxes_only, NAMES)['AP']
  assert coco.evaluate_boxes(gt, results, NAMES)['AP'] != ours['segm_AP']


def test_ground_truth_carries_the_records_segmentations():
  gt_json, records, *_ = _scene()
  gt = coco.ground_truth_coco(records, CATEGORY_IDS, NAMES)
  assert [a['segmentation'] for a in gt.dataset['annotations']] == [a['segmentation'] for a in gt_json['annotations']]
  no_segm = [{k: v for k, v in r.items() if k != 'segmentation'} for r in records]
  assert all('segmentation' not in a for a in coco.ground_truth_coco(no_segm, CATEGORY_IDS, NAMES).dataset['annotations'])


def test_results_json_round_trips(tmp_path):
  scene = _scene(seed=1)
  results = _results(scene)
  assert all(isinstance(r['segmentation']['counts'], str) for r in results)
  path = tmp_path / 'eval' / 'segm.json'
  coco.write_results_json(str(path), results)
  assert json.loads(path.read_text()) == results
  gt = coco.ground_truth_coco(scene[1], CATEGORY_IDS, NAMES)
  loaded = gt.loadRes(str(path))
  for result, ann in zip(results, loaded.loadAnns(loaded.getAnnIds())):
    assert {k: ann[k] for k in result} == result
  masks = np.concatenate([m.reshape(-1) for m in scene[-1]])  # decoded back, in results order
  decoded = np.concatenate([mask_util.decode(r['segmentation']).reshape(-1) for r in results])
  np.testing.assert_array_equal(np.sort(decoded), np.sort(masks.astype(np.uint8)))


def test_masks_to_rle_is_mmdets_encoding():
  rng = np.random.default_rng(3)
  masks = rng.random((5, 23, 17)) < 0.3
  masks[0] = False
  masks[1] = True
  ours = coco.masks_to_rle(masks)
  for mask, rle in zip(masks, ours):  # mmdet's encode_mask_results, counts decoded as CocoMetric does
    theirs = mask_util.encode(np.array(mask[:, :, np.newaxis], order='F', dtype='uint8'))[0]
    assert rle == {'size': [23, 17], 'counts': theirs['counts'].decode()}
    np.testing.assert_array_equal(mask_util.decode(rle), mask)
  assert coco.masks_to_rle(np.zeros((0, 4, 8), bool)) == []


def _hand_records():
  """Image 1 (20 x 30): a cat square 10 x 10 at (5, 5) as a polygon. Image 2: only a crowd RLE."""
  crowd = np.zeros((20, 30), bool)
  crowd[:10, :10] = True
  return [{'image_id': 1, 'orig_size': (20, 30), 'boxes': [[5, 5, 15, 15]], 'labels': [0], 'is_crowd': [0],
           'area': [100.0], 'segmentation': ['[[5,5,15,5,15,15,5,15]]']},
          {'image_id': 2, 'orig_size': (20, 30), 'boxes': [[0, 0, 10, 10]], 'labels': [1], 'is_crowd': [1],
           'area': [100.0], 'segmentation': [json.dumps(_uncompressed_rle(crowd))]}]


def test_hand_checked():
  """A detection covering half the square (IoU 50 / 100 = 0.5): a hit at IoU 0.5 only, so AP50 = 1 and AP at
  0.55..0.95 = 0: AP = 0.1. A detection on the crowd region is ignored; the crowd-only image adds nothing."""
  gt = coco.ground_truth_coco(_hand_records(), CATEGORY_IDS, NAMES)
  half = np.zeros((20, 30), bool)
  half[5:15, 5:10] = True
  on_crowd = np.zeros((20, 30), bool)
  on_crowd[2:8, 2:8] = True
  rles = [coco.masks_to_rle(half[None]), coco.masks_to_rle(on_crowd[None])]
  valid = np.ones((2, 1), bool)
  results = coco.detections_to_results([1, 2], np.array([[[5, 5, 15, 15]], [[2, 2, 8, 8]]], np.float32),
                                       np.array([[0.9], [0.8]]), np.array([[0], [1]]), valid, CATEGORY_IDS,
                                       rles=rles)
  out = coco.evaluate_segm(gt, results, NAMES)
  assert out['segm_AP50'] == pytest.approx(1.0) and out['segm_AP75'] == 0.0 and out['segm_AP'] == pytest.approx(0.1)
  np.testing.assert_array_equal(out['segm_per_class_AP'][1:], [np.nan] * 3)  # dog: only a crowd region
  assert coco.evaluate_boxes(gt, results, NAMES)['AP'] == pytest.approx(1.0)  # the box is exact; the mask is not


def test_pasted_masks_through_the_evaluator():
  """paste_masks' output (bool at the original size) goes straight into masks_to_rle and evaluates."""
  gt = coco.ground_truth_coco(_hand_records(), CATEGORY_IDS, NAMES)
  probs = np.ones((1, 28, 28), np.float32)
  masks = mask_paste.paste_masks(probs, np.array([[5, 5, 15, 15]], np.float32), (20, 30))
  results = coco.detections_to_results([1, 2], np.array([[[5, 5, 15, 15]], [[0, 0, 1, 1]]], np.float32),
                                       np.array([[0.9], [0.0]]), np.zeros((2, 1), int),
                                       np.array([[True], [False]]), CATEGORY_IDS,
                                       rles=[coco.masks_to_rle(masks), []])
  assert coco.evaluate_segm(gt, results, NAMES)['segm_AP'] == pytest.approx(1.0)


def test_no_detections_give_zero_ap():
  out = coco.evaluate_segm(coco.ground_truth_coco(_hand_records(), CATEGORY_IDS, NAMES), [], NAMES)
  assert out['segm_AP'] == 0.0 and out['segm_AR100'] == 0.0
  np.testing.assert_array_equal(out['segm_per_class_AP'], [0.0, np.nan, np.nan, np.nan])


def test_bad_input_is_named():
  records = _hand_records()
  gt = coco.ground_truth_coco(records, CATEGORY_IDS, NAMES)
  result = {'image_id': 1, 'category_id': 7, 'bbox': [0, 0, 1, 1], 'score': 1.0}
  with pytest.raises(ValueError, match='has no segmentation'):
    coco.evaluate_segm(gt, [result], NAMES)
  with pytest.raises(ValueError, match=r'\[20, 29\] mask for image 1'):
    coco.evaluate_segm(gt, [{**result, 'segmentation': coco.masks_to_rle(np.ones((1, 20, 29), bool))[0]}], NAMES)
  lacking = [dict(records[0], segmentation=['']), records[1]]  # '' is how the records say "none"
  with pytest.raises(ValueError, match='1 of 2 ground-truth annotations have no segmentation'):
    coco.evaluate_segm(coco.ground_truth_coco(lacking, CATEGORY_IDS, NAMES), [], NAMES)
  assert coco.evaluate_boxes(coco.ground_truth_coco(lacking, CATEGORY_IDS, NAMES), [], NAMES)['AP'] == 0.0
  with pytest.raises(ValueError, match='2 segmentations for 1 boxes'):
    coco.ground_truth_coco([dict(records[0], segmentation=['', ''])], CATEGORY_IDS, NAMES)
  with pytest.raises(ValueError, match='2 valid detections but 1 RLEs'):
    coco.detections_to_results([1], np.zeros((1, 2, 4)), np.ones((1, 2)), np.zeros((1, 2), int),
                               np.ones((1, 2), bool), CATEGORY_IDS, rles=[coco.masks_to_rle(np.ones((1, 2, 2)))])
  with pytest.raises(ValueError, match='masks_to_rle'):
    coco.masks_to_rle(np.ones((4, 4), bool))


def test_agrees_with_mmdet_coco_metric():
  """mmdet 3.3's CocoMetric(metric='segm') without an annotation file: it builds the ground truth from the
  instances (area = box w * h, category ids = labels, masks as given) and encodes the predicted masks."""
  torch = pytest.importorskip('torch')
  from tests.references import mmseg_stub  # pylint: disable=g-import-not-at-top
  mmseg_stub.install()
  try:
    from mmdet.evaluation.metrics import CocoMetric  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    pytest.skip(f'mmdet CocoMetric not importable: {e}')
  scene = _scene(seed=2)
  _, records, image_ids, boxes, scores, labels, valid, masks = scene
  records = [r for r in records if len(r['labels'])]  # mmdet writes no annotations key for an empty image
  for r in records:
    r['area'] = np.prod(r['boxes'][:, 2:] - r['boxes'][:, :2], axis=1)
  keep_images = [int(r['image_id']) for r in records]
  metric = CocoMetric(metric='segm', classwise=True)
  metric.dataset_meta = {'classes': NAMES}
  samples = []
  for n, image_id in enumerate(image_ids):
    if image_id not in keep_images:
      continue
    r = records[keep_images.index(image_id)]
    keep = valid[n]
    samples.append({'img_id': int(image_id), 'ori_shape': tuple(int(s) for s in r['orig_size']),
                    'pred_instances': {'bboxes': torch.from_numpy(boxes[n][keep]),
                                       'scores': torch.from_numpy(scores[n][keep]),
                                       'labels': torch.from_numpy(labels[n][keep].astype(np.int64)),
                                       'masks': torch.from_numpy(masks[n])},
                    'instances': [{'bbox': b.tolist(), 'bbox_label': int(l), 'ignore_flag': int(c),
                                   'mask': json.loads(s)}
                                  for b, l, c, s in zip(r['boxes'], r['labels'], r['is_crowd'],
                                                        r['segmentation'])]})
  metric.process({}, samples)
  theirs = metric.compute_metrics(metric.results)

  category_ids = list(range(len(NAMES)))
  rows = [list(image_ids).index(i) for i in keep_images]
  results = coco.detections_to_results(image_ids[rows], boxes[rows], scores[rows], labels[rows], valid[rows],
                                       category_ids, rles=[coco.masks_to_rle(masks[n]) for n in rows])
  ours = coco.evaluate_segm(coco.ground_truth_coco(records, category_ids, NAMES), results, NAMES)
  mmdet_names = {'AP': 'mAP', 'AP50': 'mAP_50', 'AP75': 'mAP_75', 'APs': 'mAP_s', 'APm': 'mAP_m', 'APl': 'mAP_l'}
  for ours_name, their_name in mmdet_names.items():  # mmdet rounds to 3 decimals
    assert float(f'{round(ours[f"segm_{ours_name}"], 3)}') == theirs[f'segm_{their_name}'], ours_name
  for name, ap in zip(NAMES, ours['segm_per_class_AP']):
    assert (np.isnan(ap) and np.isnan(theirs[f'{name}_precision'])) or \
           round(ap, 3) == theirs[f'{name}_precision'], name
