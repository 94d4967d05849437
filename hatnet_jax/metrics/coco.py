"""COCO box AP with the official evaluation (pycocotools' COCOeval), ground truth built in memory.

The detection task keeps every image's detections with `accumulate.Examples`; its finalize function turns
them into COCO results (`detections_to_results`) and scores them against a ground-truth object built from
the eval split's records (`ground_truth_coco`), so no annotation file has to sit next to the run.
`evaluate_boxes` gives COCOeval's 12 numbers, mmdet's class-wise AP and COCOeval's printed summary.
Conventions follow mmdet 3.3's CocoMetric (xyxy -> xywh as x2 - x1 without rounding, annotation ids from 1).
"""
import contextlib
import io
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# COCOeval.stats in order (maxDets 1/10/100; areas all/small/medium/large).
STAT_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')
_RECORD_KEYS = ('image_id', 'orig_size', 'boxes', 'labels', 'is_crowd', 'area')


def _quiet_coco(dataset: dict) -> COCO:
  """A COCO object over an in-memory dataset dict, without createIndex's prints."""
  coco = COCO()
  coco.dataset = dataset
  with contextlib.redirect_stdout(io.StringIO()):
    coco.createIndex()
  return coco


def _check_categories(category_ids: Sequence[int], class_names: Sequence[str]) -> list[int]:
  ids = [int(c) for c in category_ids]
  if len(ids) != len(class_names) or len(set(ids)) != len(ids):
    raise ValueError(f'category_ids must be {len(class_names)} distinct ids, one per class name (label k -> '
                     f'category_ids[k]); got {len(ids)} ids ({len(set(ids))} distinct)')
  return ids


def ground_truth_coco(records: Sequence[Mapping[str, Any]], category_ids: Sequence[int],
                      class_names: Sequence[str]) -> COCO:
  """A pycocotools COCO ground truth built in memory from per-image records.

  Each record: 'image_id' int, 'orig_size' (h, w), 'boxes' [n, 4] xyxy in original pixels, 'labels' [n]
  contiguous 0..K-1, 'is_crowd' [n], 'area' [n] (COCO's annotation area, which decides small/medium/large).
  Boxes become COCO xywh (w = x2 - x1), label k category `category_ids[k]` named `class_names[k]` (the
  categories are listed in label order), annotations are numbered 1..N in record order.

  For iouType 'bbox' COCOeval reads only: the images' 'id', the categories' 'id', and per annotation 'id',
  'image_id', 'category_id', 'bbox', 'area' and 'iscrowd' (crowd boxes are matched with intersection over
  the detection's area, and ignored). So for COCO val2017 this evaluates as the official annotation file,
  up to the float rounding of the file's xywh -> xyxy -> xywh round trip (~1e-13 px in float64: keep the
  boxes float64; float32 records would shift them ~1e-5 px).
  """
  ids = _check_categories(category_ids, class_names)
  images, annotations, seen = [], [], set()
  for index, record in enumerate(records):
    missing = [k for k in _RECORD_KEYS if k not in record]
    if missing:
      raise ValueError(f'ground_truth_coco: record {index} lacks {missing}; each record needs {_RECORD_KEYS}')
    image_id = int(record['image_id'])
    if image_id in seen:
      raise ValueError(f'ground_truth_coco: image_id {image_id} appears twice (record {index}); ids must be '
                       'unique per image')
    seen.add(image_id)
    boxes = np.asarray(record['boxes'], np.float64).reshape(-1, 4)
    labels, crowd, area = (np.asarray(record[k]).reshape(-1) for k in ('labels', 'is_crowd', 'area'))
    if not len(boxes) == len(labels) == len(crowd) == len(area):
      raise ValueError(f'ground_truth_coco: record {index} (image {image_id}) has {len(boxes)} boxes, '
                       f'{len(labels)} labels, {len(crowd)} is_crowd and {len(area)} areas; give one per box')
    if len(labels) and (labels.min() < 0 or labels.max() >= len(ids)):
      raise ValueError(f'ground_truth_coco: image {image_id} has labels outside 0..{len(ids) - 1} '
                       f'({labels.min()}..{labels.max()}); labels are contiguous class indices')
    height, width = (int(s) for s in record['orig_size'])
    images.append({'id': image_id, 'height': height, 'width': width})
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).tolist()
    for bbox, label, is_crowd, a in zip(xywh, labels.tolist(), crowd.tolist(), area.tolist()):
      annotations.append({'id': len(annotations) + 1, 'image_id': image_id, 'category_id': ids[int(label)],
                          'bbox': bbox, 'area': float(a), 'iscrowd': int(bool(is_crowd))})
  categories = [{'id': c, 'name': str(name)} for c, name in zip(ids, class_names)]
  return _quiet_coco({'images': images, 'categories': categories, 'annotations': annotations})


def detections_to_results(image_ids, boxes, scores, labels, valid, category_ids: Sequence[int]) -> list[dict]:
  """The COCO results format (what loadRes and the evaluation server take) from padded detections.

  image_ids [N]; boxes [N, D, 4] xyxy in original pixels; scores, labels (contiguous), valid [N, D]. One
  {'image_id', 'category_id', 'bbox': [x, y, w, h], 'score'} per valid detection, in image order then
  detection order, as plain Python numbers. Like mmdet's results2json, w = x2 - x1 in float64 of the given
  values, nothing rounded.
  """
  image_ids = np.asarray(image_ids).reshape(-1)
  boxes, scores = np.asarray(boxes), np.asarray(scores)
  labels, valid = np.asarray(labels), np.asarray(valid).astype(bool)
  n, d = valid.shape if valid.ndim == 2 else (-1, -1)
  if (valid.ndim != 2 or image_ids.shape != (n,) or boxes.shape != (n, d, 4) or scores.shape != (n, d)
      or labels.shape != (n, d)):
    raise ValueError(f'detections_to_results: expected image_ids [N], boxes [N, D, 4], scores/labels/valid '
                     f'[N, D]; got {image_ids.shape}, {boxes.shape}, {scores.shape}/{labels.shape}/{valid.shape}')
  rows, cols = np.nonzero(valid)  # row-major: image order, then detection order
  kept = labels[rows, cols].astype(np.int64)
  if len(kept) and (kept.min() < 0 or kept.max() >= len(category_ids)):
    raise ValueError(f'detections_to_results: valid labels span {kept.min()}..{kept.max()}, outside '
                     f'0..{len(category_ids) - 1} (one category id per contiguous label)')
  xyxy = boxes[rows, cols].astype(np.float64)
  xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1).tolist()
  cats = np.asarray([int(c) for c in category_ids], np.int64)[kept].tolist()
  return [{'image_id': i, 'category_id': c, 'bbox': b, 'score': s}
          for i, c, b, s in zip(image_ids[rows].astype(np.int64).tolist(), cats, xywh,
                                scores[rows, cols].astype(np.float64).tolist())]


def _load_results(gt_coco: COCO, results: Sequence[Mapping[str, Any]]) -> COCO:
  """gt_coco.loadRes on copies (it writes 'id', 'area', ... into the dicts); an empty list, which loadRes
  cannot take, gives a results object with no detections."""
  unknown = {r['image_id'] for r in results} - set(gt_coco.getImgIds())
  if unknown:
    raise ValueError(f'evaluate_boxes: results name image ids that the ground truth lacks '
                     f'(e.g. {sorted(unknown)[:5]}); build the ground truth from the same eval split')
  if not results:
    return _quiet_coco({'images': list(gt_coco.dataset['images']), 'annotations': [],
                        'categories': [dict(c) for c in gt_coco.dataset['categories']]})
  with contextlib.redirect_stdout(io.StringIO()):
    return gt_coco.loadRes([dict(r) for r in results])


def class_ap(precision: np.ndarray, index: int) -> float:
  """mmdet's class-wise AP: precision [T, R, K, A, M] at class `index`, all areas, the last maxDets,
  averaged over the entries > -1; nan where there are none (no ground truth of the class)."""
  values = precision[:, :, index, 0, -1]
  values = values[values > -1]
  return float(np.mean(values)) if values.size else float('nan')


def evaluate_boxes(gt_coco: COCO, results: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> dict:
  """COCOeval(iouType='bbox') with its default parameters: the 12 stats (STAT_NAMES; -1 where COCOeval has
  nothing to average, e.g. no ground truth in an area range), 'per_class_AP' float64 [K] in contiguous
  label order (the order of gt_coco's categories) and 'summary', the text COCOeval.summarize prints.

  No detections at all give AP 0 where there is ground truth (mmdet 3.3 logs an error and reports nothing).
  Default parameters are the official ones (maxDets 1/10/100, image ids sorted); mmdet's CocoMetric sets
  maxDets 100/300/1000 and its dataset's image order: the same AP with at most 100 detections per image
  (RetinaNet's max_per_img) and no equal scores across images, but its AR items are AR@100/300/1000.
  """
  categories = gt_coco.dataset['categories']
  if len(categories) != len(class_names):
    raise ValueError(f'evaluate_boxes: {len(class_names)} class names for a ground truth with '
                     f'{len(categories)} categories; pass the names ground_truth_coco was built with')
  evaluator = COCOeval(gt_coco, _load_results(gt_coco, results), iouType='bbox')
  with contextlib.redirect_stdout(io.StringIO()):
    evaluator.evaluate()
    evaluator.accumulate()
  summary = io.StringIO()
  with contextlib.redirect_stdout(summary):
    evaluator.summarize()
  out = {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats)}
  position = {c: k for k, c in enumerate(evaluator.params.catIds)}  # COCOeval sorts the category ids
  out['per_class_AP'] = np.array([class_ap(evaluator.eval['precision'], position[c['id']])
                                  for c in categories], np.float64)
  out['summary'] = summary.getvalue()
  return out


def write_results_json(path: str, results: Sequence[Mapping[str, Any]]) -> None:
  """Writes the results list as JSON, atomically (a temporary file beside it, then os.replace); creates
  the parent folders."""
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}'
  try:
    with open(tmp, 'w') as f:
      json.dump(list(results), f)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
