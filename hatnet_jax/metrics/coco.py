"""COCO box and mask AP with the official evaluation (pycocotools' COCOeval), ground truth built in memory.

The detection task keeps every image's detections with `accumulate.Examples`; its finalize function turns
them into COCO results (`detections_to_results`, with each detection's mask as RLE from `masks_to_rle` for
Mask R-CNN) and scores them against a ground-truth object built from the eval split's records
(`ground_truth_coco`, polygons and RLEs included), so no annotation file has to sit next to the run.
`evaluate_boxes` / `evaluate_segm` give COCOeval's 12 numbers, mmdet's class-wise AP and COCOeval's printed
summary. Conventions follow mmdet 3.3's CocoMetric (xyxy -> xywh as x2 - x1 without rounding, annotation ids
from 1, masks RLE-encoded from Fortran-ordered uint8 with counts as str, segm evaluated without the boxes).
"""
import contextlib
import io
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_util
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


def _segmentations(record: Mapping[str, Any], count: int, index: int, image_id: int) -> list:
  """The record's per-annotation segmentations parsed (JSON text -> object), None where there is none."""
  if 'segmentation' not in record:
    return [None] * count
  values = list(record['segmentation'])
  if len(values) != count:
    raise ValueError(f'ground_truth_coco: record {index} (image {image_id}) has {len(values)} segmentations '
                     f'for {count} boxes; give one per box (\'\' or None where there is none)')
  out = []
  for value in values:
    if isinstance(value, bytes):
      value = value.decode()
    if isinstance(value, str):
      value = json.loads(value) if value else None
    out.append(value if value else None)  # '' / [] / {}: no segmentation
  return out


def ground_truth_coco(records: Sequence[Mapping[str, Any]], category_ids: Sequence[int],
                      class_names: Sequence[str]) -> COCO:
  """A pycocotools COCO ground truth built in memory from per-image records.

  Each record: 'image_id' int, 'orig_size' (h, w), 'boxes' [n, 4] xyxy in original pixels, 'labels' [n]
  contiguous 0..K-1, 'is_crowd' [n], 'area' [n] (COCO's annotation area, which decides small/medium/large),
  and optionally 'segmentation' [n]: each annotation's polygons or RLE as the records store them (JSON text,
  '' when none) or as parsed objects (None when none). They go into the annotations unchanged, so COCOeval
  decodes them as from the annotation file (polygons and uncompressed crowd RLE against the image's size);
  an annotation without one gets no 'segmentation' key, which only `evaluate_segm` minds. Boxes become COCO
  xywh (w = x2 - x1), label k category `category_ids[k]` named `class_names[k]` (the categories are listed in
  label order), annotations are numbered 1..N in record order.

  For iouType 'bbox' COCOeval reads only: the images' 'id', the categories' 'id', and per annotation 'id',
  'image_id', 'category_id', 'bbox', 'area' and 'iscrowd' (crowd boxes are matched with intersection over
  the detection's area, and ignored); for 'segm' the 'segmentation' instead of 'bbox'. So for COCO val2017
  this evaluates as the official annotation file, up to the float rounding of the file's xywh -> xyxy -> xywh
  round trip (~1e-13 px in float64: keep the boxes float64; float32 records would shift them ~1e-5 px).
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
    segmentations = _segmentations(record, len(labels), index, image_id)
    height, width = (int(s) for s in record['orig_size'])
    images.append({'id': image_id, 'height': height, 'width': width})
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).tolist()
    rows = zip(xywh, labels.tolist(), crowd.tolist(), area.tolist(), segmentations)
    for bbox, label, is_crowd, a, segm in rows:
      annotations.append({'id': len(annotations) + 1, 'image_id': image_id, 'category_id': ids[int(label)],
                          'bbox': bbox, 'area': float(a), 'iscrowd': int(bool(is_crowd))})
      if segm is not None:
        annotations[-1]['segmentation'] = segm
  categories = [{'id': c, 'name': str(name)} for c, name in zip(ids, class_names)]
  return _quiet_coco({'images': images, 'categories': categories, 'annotations': annotations})


def masks_to_rle(masks) -> list[dict]:
  """COCO's compressed RLE of each mask of bool [N, h, w], as mmdet's encode_mask_results (pycocotools
  mask.encode of Fortran-ordered uint8) with the counts decoded to str as CocoMetric writes them to JSON:
  [{'size': [h, w], 'counts': str}] in mask order."""
  masks = np.asarray(masks)
  if masks.ndim != 3:
    raise ValueError(f'masks_to_rle: expected masks [N, h, w]; got shape {masks.shape}')
  if not len(masks):
    return []
  rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
  return [{'size': [int(s) for s in r['size']], 'counts': r['counts'].decode()} for r in rles]


def _flat_rles(rles, valid: np.ndarray) -> list[dict]:
  """Per image lists of RLEs (one per valid detection) -> one list in results order, each dict copied."""
  if len(rles) != len(valid):
    raise ValueError(f'detections_to_results: rles has {len(rles)} entries for {len(valid)} images; give one '
                     'list per image')
  out = []
  for n, (image_rles, image_valid) in enumerate(zip(rles, valid)):
    if len(image_rles) != int(image_valid.sum()):
      raise ValueError(f'detections_to_results: image {n} has {int(image_valid.sum())} valid detections but '
                       f'{len(image_rles)} RLEs; give one per valid detection, in detection order')
    for r in image_rles:
      counts = r['counts'].decode() if isinstance(r['counts'], bytes) else r['counts']
      out.append({'size': [int(v) for v in r['size']], 'counts': counts})
  return out


def detections_to_results(image_ids, boxes, scores, labels, valid, category_ids: Sequence[int],
                          rles=None) -> list[dict]:
  """The COCO results format (what loadRes and the evaluation server take) from padded detections.

  image_ids [N]; boxes [N, D, 4] xyxy in original pixels; scores, labels (contiguous), valid [N, D]. One
  {'image_id', 'category_id', 'bbox': [x, y, w, h], 'score'} per valid detection, in image order then
  detection order, as plain Python numbers. Like mmdet's results2json, w = x2 - x1 in float64 of the given
  values, nothing rounded. With `rles` (per image, a list of one RLE per valid detection in detection order,
  as `masks_to_rle` gives them), each entry also has its 'segmentation': mmdet's segm results, which
  `evaluate_boxes` and `evaluate_segm` both take.
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
  results = [{'image_id': i, 'category_id': c, 'bbox': b, 'score': s}
             for i, c, b, s in zip(image_ids[rows].astype(np.int64).tolist(), cats, xywh,
                                   scores[rows, cols].astype(np.float64).tolist())]
  if rles is not None:
    for result, rle in zip(results, _flat_rles(rles, valid)):
      result['segmentation'] = rle
  return results


def _load_results(gt_coco: COCO, results: Sequence[Mapping[str, Any]], caller: str, drop=()) -> COCO:
  """gt_coco.loadRes on copies without the keys `drop` (it writes 'id', 'area', ... into the dicts); an
  empty list, which loadRes cannot take, gives a results object with no detections."""
  unknown = {r['image_id'] for r in results} - set(gt_coco.getImgIds())
  if unknown:
    raise ValueError(f'{caller}: results name image ids that the ground truth lacks '
                     f'(e.g. {sorted(unknown)[:5]}); build the ground truth from the same eval split')
  if not results:
    return _quiet_coco({'images': list(gt_coco.dataset['images']), 'annotations': [],
                        'categories': [dict(c) for c in gt_coco.dataset['categories']]})
  with contextlib.redirect_stdout(io.StringIO()):
    return gt_coco.loadRes([{k: v for k, v in r.items() if k not in drop} for r in results])


def class_ap(precision: np.ndarray, index: int) -> float:
  """mmdet's class-wise AP: precision [T, R, K, A, M] at class `index`, all areas, the last maxDets,
  averaged over the entries > -1; nan where there are none (no ground truth of the class)."""
  values = precision[:, :, index, 0, -1]
  values = values[values > -1]
  return float(np.mean(values)) if values.size else float('nan')


def _evaluate(gt_coco: COCO, results_coco: COCO, class_names: Sequence[str], iou_type: str) -> dict:
  """COCOeval with default parameters: the 12 stats, per-class AP in label order, the summary text."""
  categories = gt_coco.dataset['categories']
  evaluator = COCOeval(gt_coco, results_coco, iouType=iou_type)
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


def _check_names(gt_coco: COCO, class_names: Sequence[str], caller: str) -> None:
  count = len(gt_coco.dataset['categories'])
  if count != len(class_names):
    raise ValueError(f'{caller}: {len(class_names)} class names for a ground truth with {count} categories; '
                     'pass the names ground_truth_coco was built with')


def evaluate_boxes(gt_coco: COCO, results: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> dict:
  """COCOeval(iouType='bbox') with its default parameters: the 12 stats (STAT_NAMES; -1 where COCOeval has
  nothing to average, e.g. no ground truth in an area range), 'per_class_AP' float64 [K] in contiguous
  label order (the order of gt_coco's categories) and 'summary', the text COCOeval.summarize prints.

  No detections at all give AP 0 where there is ground truth (mmdet 3.3 logs an error and reports nothing).
  Default parameters are the official ones (maxDets 1/10/100, image ids sorted); mmdet's CocoMetric sets
  maxDets 100/300/1000 and its dataset's image order: the same AP with at most 100 detections per image
  (RetinaNet's max_per_img) and no equal scores across images, but its AR items are AR@100/300/1000.
  Results with 'segmentation' (Mask R-CNN's) evaluate their boxes: loadRes keeps the box area.
  """
  _check_names(gt_coco, class_names, 'evaluate_boxes')
  return _evaluate(gt_coco, _load_results(gt_coco, results, 'evaluate_boxes'), class_names, 'bbox')


def _check_segm(gt_coco: COCO, results: Sequence[Mapping[str, Any]]) -> None:
  """Every ground-truth annotation and every result has a segmentation, results sized as their image."""
  lacking = [a for a in gt_coco.dataset['annotations'] if 'segmentation' not in a]
  if lacking:
    raise ValueError(f'evaluate_segm: {len(lacking)} of {len(gt_coco.dataset["annotations"])} ground-truth '
                     f'annotations have no segmentation (e.g. annotation {lacking[0]["id"]} of image '
                     f'{lacking[0]["image_id"]}); mask AP needs every annotation\'s polygons or RLE: build the '
                     "ground truth from records with 'segmentation', or evaluate boxes only")
  sizes = {i['id']: [int(i['height']), int(i['width'])] for i in gt_coco.dataset['images']}
  for index, r in enumerate(results):
    if 'segmentation' not in r:
      raise ValueError(f'evaluate_segm: result {index} (image {r["image_id"]}) has no segmentation; pass '
                       'detections_to_results(..., rles=...)')
    size = [int(v) for v in r['segmentation']['size']]
    if r['image_id'] in sizes and size != sizes[r['image_id']]:
      raise ValueError(f'evaluate_segm: result {index} has a {size} mask for image {r["image_id"]} of size '
                       f'{sizes[r["image_id"]]} (h, w); paste the masks at the original image size')


def evaluate_segm(gt_coco: COCO, results: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> dict:
  """COCOeval(iouType='segm') with its default parameters: what evaluate_boxes returns, each key with a
  'segm_' prefix ('segm_AP', ..., 'segm_per_class_AP', 'segm_summary').

  As mmdet's CocoMetric: each result's 'bbox' is dropped before loadRes, so a detection's area (which
  decides small/medium/large for unmatched detections) is its mask's area, not its box's. Every
  ground-truth annotation needs a segmentation (pycocotools cannot evaluate masks without one): an error
  names how many lack one, rather than silently leaving them out of the ground truth. COCOeval replaces the
  ground truth's polygons and uncompressed RLEs by compressed RLEs in place on the first call (later calls
  reuse them; box evaluation does not read them).
  """
  _check_names(gt_coco, class_names, 'evaluate_segm')
  _check_segm(gt_coco, results)
  out = _evaluate(gt_coco, _load_results(gt_coco, results, 'evaluate_segm', drop=('bbox',)), class_names,
                  'segm')
  return {f'segm_{k}': v for k, v in out.items()}


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
