"""The COCO 2017 TFDS builder on a tiny generated manual dir (unpacked and zipped): records, metadata, the
training filter, ground truth, and one clear error per way the files can be wrong."""
import json
import logging
import os
import shutil

import ml_collections
import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')
pytest.importorskip('tensorflow_datasets')

from configs import det_default  # pylint: disable=g-import-not-at-top
from hatnet_jax.data.detection import coco  # pylint: disable=g-import-not-at-top
from hatnet_jax.data.detection import coco_layout  # pylint: disable=g-import-not-at-top
from hatnet_jax.data.detection import sources as det_sources  # pylint: disable=g-import-not-at-top
from tests.data.detection import fake_coco  # pylint: disable=g-import-not-at-top


def data_config(**kw):
  d = det_default.data_config()
  d.update(kw)
  return d


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  base = tmp_path_factory.mktemp('coco')
  manual = fake_coco.make(str(base / 'coco'))
  d = data_config(manual_dir=manual, data_dir=str(base / 'tfds'))
  from hatnet_jax.tools import prepare_data  # pylint: disable=g-import-not-at-top
  assert prepare_data.main(['--dataset=coco', f'--manual_dir={manual}', f'--data_dir={d.data_dir}']) == 0
  assert prepare_data.main(['--dataset=coco', f'--manual_dir={base / "none"}',
                            f'--data_dir={base / "tfds2"}']) == 1
  return d


def _expected_objects(data, image_id):
  out = []
  for a in data['annotations']:
    if a['image_id'] == image_id:
      x, y, w, h = a['bbox']
      out.append((a['id'], [x, y, x + w, y + h], fake_coco.LABEL_OF[a['category_id']], a['category_id'],
                  bool(a['iscrowd']), a['area'], json.loads(json.dumps(a['segmentation']))))
  return out


@pytest.mark.parametrize('split', ['train', 'validation'])
def test_records_hold_every_annotation_in_image_id_order(prepared, split):
  data = fake_coco.annotations(split)
  src = det_sources.open_split(prepared, split)
  ids = sorted(im['id'] for im in data['images'])
  assert len(src) == len(ids) and src.meta['image_ids'].tolist() == ids
  folder = coco_layout.SPLITS[split]
  for i, r in enumerate(src.read(range(len(src)))):
    im = next(m for m in data['images'] if m['id'] == ids[i])
    assert (r['image_id'], r['file_name'], r['height'], r['width']) == (
        im['id'], im['file_name'], im['height'], im['width'])
    assert (src.meta['heights'][i], src.meta['widths'][i]) == (im['height'], im['width'])
    with open(os.path.join(prepared.manual_dir, folder, im['file_name']), 'rb') as f:
      assert r['image'] == f.read()  # the original JPEG, not re-encoded
    want = _expected_objects(data, im['id'])
    assert r['objects/id'].tolist() == [w[0] for w in want]  # the file's order
    np.testing.assert_array_equal(r['objects/bbox'], np.array([w[1] for w in want], np.float32).reshape(-1, 4))
    assert r['objects/label'].tolist() == [w[2] for w in want]
    assert r['objects/category_id'].tolist() == [w[3] for w in want]
    assert r['objects/is_crowd'].tolist() == [w[4] for w in want]
    np.testing.assert_array_equal(r['objects/area'], np.array([w[5] for w in want], np.float32))
    assert [json.loads(s) for s in r['objects/segmentation']] == [w[6] for w in want]
    assert src.meta['num_annotations'][i] == len(want)
    assert src.meta['num_kept'][i] == int(r['objects/kept'].sum())
  kept = {int(a): bool(k) for r in src.read(range(len(src))) for a, k in zip(r['objects/id'], r['objects/kept'])}
  assert [a for a, k in sorted(kept.items()) if not k] == ([5, 6, 10] if split == 'train' else [104])


def test_dataset_info_categories_and_the_mmdet_training_filter(prepared):
  info = det_sources.dataset_info(prepared)
  assert info.name == 'coco' and info.num_classes == 3
  assert info.class_names == ('car', 'person', 'toothbrush') and info.category_ids == (3, 1, 90)
  # 7 train images: 87038 has no annotation, 174482 is 48x20 (short side < 32); the crowd-only 252219 and
  # 581929, whose only box is degenerate, stay (mmdet's filter counts every annotation).
  assert (info.num_train, info.num_eval, info.eval_split) == (5, 4, 'validation')
  src = det_sources.open_split(prepared, 'train')
  kept_ids = src.meta['image_ids'][det_sources.train_indices(src.meta, prepared)].tolist()
  assert kept_ids == [37777, 252219, 397133, 403385, 581929]
  loose = data_config(filter_empty_gt=False, min_size=0)
  assert len(det_sources.train_indices(src.meta, loose)) == 7


def test_ground_truth_is_every_annotation_in_original_pixels(prepared):
  gt = det_sources.ground_truth(prepared, 'validation')
  data = fake_coco.annotations('validation')
  assert [g['image_id'] for g in gt] == [139, 285, 632, 724]
  for g in gt:
    im = next(m for m in data['images'] if m['id'] == g['image_id'])
    assert g['orig_size'] == (im['height'], im['width'])
    want = _expected_objects(data, g['image_id'])
    np.testing.assert_array_equal(g['boxes'], np.array([w[1] for w in want], np.float32).reshape(-1, 4))
    assert g['labels'].tolist() == [w[2] for w in want] and g['is_crowd'].tolist() == [w[4] for w in want]
    np.testing.assert_array_equal(g['area'], np.array([w[5] for w in want], np.float32))
  assert len(gt[3]['boxes']) == 1  # the w < 1 box: skipped in training, still evaluated as the official file


def test_from_the_official_zips(tmp_path, prepared):
  manual = fake_coco.make(str(tmp_path / 'zips'), zipped=True)
  assert sorted(os.listdir(manual)) == ['annotations_trainval2017.zip', 'train2017.zip', 'val2017.zip']
  d = data_config(manual_dir=manual, data_dir=str(tmp_path / 'tfds'))
  a, b = det_sources.open_split(d, 'train'), det_sources.open_split(prepared, 'train')
  for x, y in zip(a.read(range(len(a))), b.read(range(len(b)))):
    for key in x:
      np.testing.assert_array_equal(np.asarray(x[key], dtype=object), np.asarray(y[key], dtype=object))


def test_degenerate_boxes_are_counted_in_a_warning(caplog):
  with caplog.at_level(logging.WARNING):
    index = coco.index_split(fake_coco.annotations('train'), 'train', 'instances_train2017.json')
  assert index.num_skipped == 3
  assert any('3 annotations' in r.message and '[5, 6, 10]' in r.message for r in caplog.records)


def _drop_val2017(root):
  shutil.rmtree(os.path.join(root, 'val2017'))


def _remove_image(root):
  os.remove(os.path.join(root, 'val2017', f'{285:012d}.jpg'))


def _resize_image(root):
  from hatnet_jax.data import testing  # pylint: disable=g-import-not-at-top
  with open(os.path.join(root, 'val2017', f'{632:012d}.jpg'), 'wb') as f:
    f.write(testing.make_jpeg(np.random.default_rng(0), 41, 40))


def _rotated_exif_image(root):
  """285 is 48x64 (WxH) in the file; store a 64x48 grid tagged 'rotate 90 degrees when displayed'."""
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from hatnet_jax.data import testing  # pylint: disable=g-import-not-at-top
  exif = Image.Exif()
  exif[0x0112] = 6
  buf = io.BytesIO()
  Image.fromarray(testing.make_image(np.random.default_rng(0), 64, 48)).save(buf, 'JPEG', exif=exif.tobytes())
  with open(os.path.join(root, 'val2017', f'{285:012d}.jpg'), 'wb') as f:
    f.write(buf.getvalue())


def _edit(fn):
  def edit(split, data):
    if split == 'validation':
      fn(data)
  return edit


def _ann(data, aid):
  return next(a for a in data['annotations'] if a['id'] == aid)


@pytest.mark.parametrize('breakage, expect', [
    ('layout', ['lacks val2017/ or val2017.zip', 'It holds: annotations/, train2017/', 'val2017.zip']),
    ('missing_image', ['lists 1 image(s) missing', f'{285:012d}.jpg', 'image id 285', 'val2017.zip']),
    ('missing_image_id', ['instances_val2017.json', 'annotation 105 refers to image_id 4242']),
    ('unknown_category', ['annotation 101', f'{285:012d}.jpg', 'category_id 7']),
    ('outside', ['annotation 102', f'{139:012d}.jpg', '2.50 px outside', 'tolerance 2 px']),
    ('size', [f'{632:012d}.jpg', 'is 41x40 (WxH) but', 'says 40x40']),
    ('exif', [f'{285:012d}.jpg', 'is 64x48 (WxH) (its EXIF orientation 6', 'says 48x64']),
])
def test_errors_name_the_file_and_the_fix(tmp_path, breakage, expect):
  edits = {'missing_image_id': _edit(lambda d: _ann(d, 105).update(image_id=4242)),
           'unknown_category': _edit(lambda d: _ann(d, 101).update(category_id=7)),
           'outside': _edit(lambda d: _ann(d, 102).update(bbox=[10.5, 5.0, 56.0, 30.0]))}  # x2 = 66.5 > 64 + 2
  root = fake_coco.make(str(tmp_path / 'coco'), edit=edits.get(breakage))
  damage = {'layout': _drop_val2017, 'missing_image': _remove_image, 'size': _resize_image,
            'exif': _rotated_exif_image}
  damage.get(breakage, lambda r: None)(root)
  d = data_config(manual_dir=root, data_dir=str(tmp_path / 'tfds'))
  with pytest.raises((ValueError, FileNotFoundError)) as e:
    det_sources.dataset_info(d)
  for text in expect:
    assert text in str(e.value), str(e.value)


def test_missing_manual_dir_names_the_layout(tmp_path):
  d = data_config(manual_dir=str(tmp_path / 'nowhere'), data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(FileNotFoundError) as e:
    det_sources.dataset_info(d)
  assert str(tmp_path / 'nowhere') in str(e.value) and 'annotations_trainval2017.zip' in str(e.value)


def test_unknown_dataset_names_the_choices():
  with pytest.raises(ValueError, match="'coco', 'digit_boxes'"):
    det_sources.dataset_info(ml_collections.ConfigDict(dict(dataset='cocoa')))
