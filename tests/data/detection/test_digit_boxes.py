"""The digit-boxes demo: the segmentation demo's scenes, one box per visible digit from its ink."""
import json

import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')
pytest.importorskip('tensorflow_datasets')

from configs import det_default  # pylint: disable=g-import-not-at-top
from hatnet_jax.data.demos import digit_boxes  # pylint: disable=g-import-not-at-top
from hatnet_jax.data.demos import digit_scenes  # pylint: disable=g-import-not-at-top
from hatnet_jax.data.detection import sources as det_sources  # pylint: disable=g-import-not-at-top


@pytest.fixture(scope='module')
def boxes_config(tmp_path_factory):
  d = det_default.data_config()
  d.dataset = 'digit_boxes/small'
  d.data_dir = str(tmp_path_factory.mktemp('tfds'))
  from hatnet_jax.tools import prepare_data  # pylint: disable=g-import-not-at-top
  assert prepare_data.main(['--dataset=digit_boxes/small', f'--data_dir={d.data_dir}']) == 0
  return d


def rle_decode(rle):
  """COCO uncompressed RLE -> bool [h, w] (column-major runs, the first of zeros)."""
  h, w = rle['size']
  flat = np.zeros(h * w, bool)
  pos, value = 0, False
  for c in rle['counts']:
    flat[pos:pos + c] = value
    pos, value = pos + c, not value
  assert pos == h * w
  return flat.reshape(w, h).T


def test_boxes_are_the_extent_of_each_digits_visible_ink():
  from PIL import Image  # pylint: disable=g-import-not-at-top
  images, labels = digit_scenes.split_digits('test')
  checked = 0
  for i in range(8):
    img, objects = digit_boxes.scene_objects('test', i, images, labels)
    scene, _, placed = digit_scenes.make_scene('test', i, images, labels)
    np.testing.assert_array_equal(img, scene)  # the segmentation demo's pixels
    h, w = img.shape[:2]
    raw = []
    for k, _, top, left, s in placed:  # each digit's ink on the canvas, independently of digit_boxes
      v = np.asarray(Image.fromarray(images[k]).resize((s, s), Image.BILINEAR)).astype(int)
      full = np.zeros((h + 2 * s, w + 2 * s), int)
      full[top + s:top + 2 * s, left + s:left + 2 * s] = v
      raw.append(full[s:s + h, s:s + w] > digit_scenes.LOW)
    visible = [m & ~np.any(raw[j + 1:], axis=0) if j + 1 < len(raw) else m for j, m in enumerate(raw)]
    expect = [(c, m) for (_, c, *_), m in zip(placed, visible) if m.any()]
    assert len(objects) == len(expect)
    for o, (c, m) in zip(objects, expect):
      ys, xs = np.nonzero(m)
      assert o['bbox'] == (xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0)
      assert (o['label'], o['category_id'], o['area'], o['is_crowd']) == (c, c + 1, float(m.sum()), False)
      np.testing.assert_array_equal(rle_decode(o['segmentation']), m)
      checked += 1
  assert checked >= 16


def test_rle_matches_pycocotools():
  mask_utils = pytest.importorskip('pycocotools.mask')
  m = np.zeros((7, 5), bool)
  m[2:5, 1:3] = True
  m[0, 0] = True
  rle = digit_boxes.rle(m)
  assert rle['counts'][0] == 0  # starts with ink: an empty first run of zeros
  coded = mask_utils.frPyObjects(rle, 7, 5)
  np.testing.assert_array_equal(mask_utils.decode(coded).astype(bool), m)
  assert mask_utils.area(coded) == m.sum()


def test_prepared_small_split_in_the_coco_record_format(boxes_config):
  info = det_sources.dataset_info(boxes_config)
  assert (info.name, info.num_classes, info.num_train, info.num_eval, info.eval_split) == (
      'digit_boxes', 10, 96, 40, 'test')
  assert info.class_names[0] == 'digit 0' and info.category_ids == tuple(range(1, 11))
  src = det_sources.open_split(boxes_config, 'test')
  assert src.meta['image_ids'].tolist() == list(range(1, 41))
  images, labels = digit_scenes.split_digits('test')
  for r in src.read([0, 7]):
    i = r['image_id'] - 1
    img, objects = digit_boxes.scene_objects('test', i, images, labels)
    np.testing.assert_array_equal(tf.io.decode_png(r['image']).numpy(), img)
    np.testing.assert_array_equal(r['objects/bbox'], np.array([o['bbox'] for o in objects], np.float32))
    assert r['objects/label'].tolist() == [o['label'] for o in objects] and r['objects/kept'].all()
    assert [json.loads(s) for s in r['objects/segmentation']] == [o['segmentation'] for o in objects]
  assert src.meta['num_kept'].min() >= 1
