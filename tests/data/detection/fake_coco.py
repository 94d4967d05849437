"""A tiny COCO 2017 manual dir: generated JPEGs and instances_{train,val}2017.json in the official layout.

Chosen to exercise every rule: categories listed out of id order (labels follow the file's order, as
mmdet's cat2label), non-sequential image ids listed out of order, annotations of different images
interleaved, a crowd box (RLE), a box exceeding the image by 0.5 px (kept as released), degenerate boxes
(w < 1, h < 1, area 0: kept=False), a training image whose only annotation is degenerate (still trained on,
without targets, as mmdet's filter counts every annotation), a training image without annotations and one
whose shorter side is under 32 px (both dropped by mmdet's training filter), a validation image without
annotations.
"""
import copy
import json
import os
import zipfile

import numpy as np

from hatnet_jax.data import testing

CATEGORIES = [{'id': 3, 'name': 'car', 'supercategory': 'vehicle'},
              {'id': 1, 'name': 'person', 'supercategory': 'person'},
              {'id': 90, 'name': 'toothbrush', 'supercategory': 'indoor'}]
LABEL_OF = {3: 0, 1: 1, 90: 2}  # the file's order
POLY = [[10.0, 10.0, 30.0, 10.0, 30.0, 25.0]]

TRAIN_IMAGES = [  # (id, width, height)
    (397133, 64, 48), (37777, 40, 72), (252219, 50, 50), (87038, 60, 40), (174482, 48, 20), (403385, 36, 36),
    (581929, 52, 40)]
VAL_IMAGES = [(139, 64, 48), (285, 48, 64), (632, 40, 40), (724, 56, 44)]


def _ann(aid, image_id, cat, bbox, area=None, crowd=0, seg=None):
  x, y, w, h = bbox
  return {'id': aid, 'image_id': image_id, 'category_id': cat, 'bbox': list(bbox),
          'area': float(w * h) * 0.8 if area is None else area, 'iscrowd': crowd,
          'segmentation': seg if seg is not None else POLY}


def annotations(split):
  """The instances json (a dict) of `split` ('train' or 'validation')."""
  if split == 'train':
    anns = [
        _ann(1, 397133, 1, (5.25, 6.5, 20.0, 15.75)),
        _ann(2, 37777, 3, (1.0, 2.0, 30.0, 40.0)),
        _ann(3, 397133, 90, (40.0, 20.0, 24.5, 28.0)),  # x2 = 64.5: 0.5 px beyond the 64 px width
        _ann(4, 252219, 1, (0.0, 0.0, 50.0, 50.0), crowd=1, seg={'counts': [0, 2500], 'size': [50, 50]}),
        _ann(5, 397133, 3, (10.0, 10.0, 0.5, 12.0)),  # w < 1: not an instance for mmdet
        _ann(6, 37777, 1, (3.0, 50.0, 10.0, 10.0), area=0.0),  # area 0: not an instance
        _ann(7, 174482, 1, (2.0, 2.0, 10.0, 10.0)),  # image's short side is 20 < 32: filtered in training
        _ann(8, 403385, 90, (4.0, 4.0, 20.0, 20.0)),
        _ann(9, 37777, 90, (20.0, 60.0, 15.0, 11.5)),
        _ann(10, 581929, 3, (4.0, 4.0, 12.0, 0.75)),  # h < 1: the image's only annotation; mmdet still trains on it
    ]
    images = TRAIN_IMAGES  # 87038 has no annotation: filtered in training
  else:
    anns = [
        _ann(101, 285, 3, (3.0, 4.0, 30.0, 50.0)),
        _ann(102, 139, 1, (10.5, 5.0, 40.0, 30.0)),
        _ann(103, 139, 90, (0.0, 0.0, 64.0, 48.0), crowd=1, seg={'counts': 'abc', 'size': [48, 64]}),
        _ann(104, 724, 1, (55.8, 20.0, 0.9, 5.0)),  # w < 1
        _ann(105, 285, 1, (20.0, 30.0, 25.0, 30.0)),
    ]
    images = VAL_IMAGES  # 632 has no annotation (still evaluated)
  folder = 'train2017' if split == 'train' else 'val2017'
  ims = [{'id': i, 'file_name': f'{i:012d}.jpg', 'width': w, 'height': h, 'license': 1} for i, w, h in images]
  return {'info': {'description': f'fake COCO {folder}'}, 'licenses': [], 'images': ims[::-1],
          'annotations': anns, 'categories': copy.deepcopy(CATEGORIES)}


def make(root, zipped=False, seed=0, edit=None):
  """Writes the manual dir under `root` (unpacked, or the three official zips); returns root.
  `edit(split, data)` may change an annotation dict before it is written."""
  rng = np.random.default_rng(seed)
  os.makedirs(root, exist_ok=True)
  jsons = {}
  for split, folder in (('train', 'train2017'), ('validation', 'val2017')):
    data = annotations(split)
    if edit is not None:
      edit(split, data)
    jsons[f'annotations/instances_{folder}.json'] = json.dumps(data).encode()
    files = {im['file_name']: testing.make_jpeg(rng, im['width'], im['height']) for im in data['images']}
    if zipped:
      with zipfile.ZipFile(os.path.join(root, folder + '.zip'), 'w') as z:
        for name, blob in files.items():
          z.writestr(f'{folder}/{name}', blob)
    else:
      os.makedirs(os.path.join(root, folder), exist_ok=True)
      for name, blob in files.items():
        with open(os.path.join(root, folder, name), 'wb') as f:
          f.write(blob)
  if zipped:
    with zipfile.ZipFile(os.path.join(root, 'annotations_trainval2017.zip'), 'w') as z:
      for name, blob in jsons.items():
        z.writestr(name, blob)
  else:
    os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
    for name, blob in jsons.items():
      with open(os.path.join(root, name), 'wb') as f:
        f.write(blob)
  return root
