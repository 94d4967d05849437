"""Parity with the real mmdet 3.3.0 / mmcv for the detection data: the resize rule, the box arithmetic of
Resize + RandomFlip, and CocoDataset's annotation parsing and training filter on the tiny COCO files.

Optional: skipped unless mmcv / mmdet are installed (`pip install --no-deps -r requirements-references.txt`);
mmdet runs on mmcv-lite with the `mmcv.ops` import stubs (tests/references/mmseg_stub.py). Exact where the
arithmetic is the same (sizes, scale factors, boxes: bit for bit); the bilinear image resize is bounded (TF's
float arithmetic vs OpenCV's 11-bit fixed point: at most 1 level, as the segmentation parity tests measured).
"""
import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')
mmcv = pytest.importorskip('mmcv')

from configs import det_default  # pylint: disable=g-import-not-at-top,wrong-import-position
from hatnet_jax.data import testing  # pylint: disable=g-import-not-at-top,wrong-import-position
from hatnet_jax.data.detection import records  # pylint: disable=g-import-not-at-top,wrong-import-position
from hatnet_jax.data.detection import sources as det_sources  # pylint: disable=g-import-not-at-top
from hatnet_jax.data.detection import transforms as det_transforms  # pylint: disable=g-import-not-at-top
from hatnet_jax.data.segmentation import transforms as seg_transforms  # pylint: disable=g-import-not-at-top
from tests.data.detection import fake_coco  # pylint: disable=g-import-not-at-top,wrong-import-position

SCALE = (1333, 800)


def _mmdet():
  """Imports mmdet's datasets (skips the test where mmdet is absent or does not import)."""
  from tests.references import mmseg_stub  # pylint: disable=g-import-not-at-top
  mmseg_stub.install()  # before mmdet imports mmcv.ops
  pytest.importorskip('mmdet')
  try:
    import mmdet.datasets  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:  # e.g. matplotlib missing (mmdet imports it at module level)
    pytest.skip(f'mmdet does not import here: {e}')


def test_resize_rule_is_mmcvs_rescale_size():
  rng = np.random.default_rng(0)
  sizes = [(480, 640), (640, 480), (427, 640), (500, 375), (1, 1), (32, 1000), (800, 1333), (801, 1334)]
  sizes += [tuple(int(x) for x in rng.integers(1, 3000, size=2)) for _ in range(300)]
  for h, w in sizes:
    for scale in (SCALE, (133, 80), (96, 64)):
      want_w, want_h = mmcv.rescale_size((w, h), scale)
      assert det_transforms.resized_size(h, w, scale) == (want_h, want_w), (h, w, scale)
      got = seg_transforms.tf_rescale_size(h, w, max(scale), min(scale))
      assert (int(got[0]), int(got[1])) == (want_h, want_w)


@pytest.mark.parametrize('w, h', [(64, 48), (37, 50), (201, 150)])
def test_image_resize_is_mmcvs_imrescale_within_one_level(w, h):
  img = testing.make_image(np.random.default_rng(w), w, h)
  want = mmcv.imrescale(img, SCALE, interpolation='bilinear', backend='cv2')
  nh, nw = det_transforms.resized_size(h, w, SCALE)
  got = seg_transforms.resize_bilinear(tf.constant(img), nh, nw).numpy()
  assert got.shape == want.shape
  assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def _record(img, boxes):
  objects = [dict(id=i + 1, bbox=tuple(b), label=i % 3, category_id=1, is_crowd=False, area=1.0, kept=True,
                  segmentation='') for i, b in enumerate(boxes)]
  ex = records.example(testing.encode(img, 'PNG'), 1, 'x.png', img.shape[0], img.shape[1], objects)
  return tf.constant(records.features('png').serialize_example(ex))


@pytest.mark.parametrize('scale', [SCALE, (133, 80)])
def test_boxes_match_mmdet_resize_and_random_flip(scale):
  _mmdet()
  from mmdet.datasets.transforms import RandomFlip, Resize  # pylint: disable=g-import-not-at-top
  from mmdet.structures.bbox import HorizontalBoxes  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  d = det_default.data_config()
  d.update(dict(scale=scale, max_boxes=12))
  for w, h in [(64, 48), (37, 50), (201, 150), (50, 50)]:
    img = testing.make_image(rng, w, h)
    x1 = rng.uniform(-1.5, w - 2, 12)
    y1 = rng.uniform(-1.5, h - 2, 12)
    boxes = np.stack([x1, y1, np.minimum(x1 + rng.uniform(1, w, 12), w + 1.8),
                      np.minimum(y1 + rng.uniform(1, h, 12), h + 1.8)], 1).astype(np.float32)
    canvas = tf.constant(det_transforms.padded_size(h, w, scale, 32))
    for flip in (False, True):
      results = dict(img=img.copy(), img_shape=(h, w), gt_bboxes=HorizontalBoxes(torch.from_numpy(boxes.copy())))
      results = Resize(scale=scale, keep_ratio=True)(results)
      if flip:
        results = RandomFlip(prob=1.0, direction='horizontal')(results)
      d.hflip_prob = 1.0 if flip else 0.0
      out = det_transforms.DetTransform(d, train=True)(_record(img, boxes), tf.constant([0, 1], tf.int64), canvas)
      np.testing.assert_array_equal(out['boxes'].numpy(), results['gt_bboxes'].tensor.numpy())  # bit for bit
      nh, nw = results['img_shape']
      assert out['image_size'].numpy().tolist() == [nh, nw]
      sx, sy = results['scale_factor']
      assert out['scale'].numpy().tolist() == [np.float32(sy), np.float32(sx)]
      got = out['image'].numpy()[:nh, :nw].astype(int)
      assert np.abs(got - results['img'].astype(int)).max() <= 1


def test_coco_dataset_parsing_and_training_filter_match_mmdet(tmp_path):
  _mmdet()
  from mmdet.datasets import CocoDataset  # pylint: disable=g-import-not-at-top
  manual = fake_coco.make(str(tmp_path / 'coco'))
  d = det_default.data_config()
  d.update(dict(manual_dir=manual, data_dir=str(tmp_path / 'tfds')))
  classes = tuple(c['name'] for c in fake_coco.CATEGORIES)
  for split, folder, test_mode in (('train', 'train2017', False), ('validation', 'val2017', True)):
    ds = CocoDataset(data_root=manual, ann_file=f'annotations/instances_{folder}.json',
                     data_prefix=dict(img=f'{folder}/'), metainfo=dict(classes=classes), test_mode=test_mode,
                     filter_cfg=dict(filter_empty_gt=True, min_size=32), pipeline=[])
    theirs = {info['img_id']: info for info in ds.load_data_list()}
    src = det_sources.open_split(d, split)
    ours = {int(r['image_id']): r for r in src.read(range(len(src)))}
    assert set(theirs) == set(ours)
    for img_id, info in theirs.items():
      r = ours[img_id]
      keep = r['objects/kept']
      inst = info['instances']
      np.testing.assert_array_equal(r['objects/bbox'][keep],
                                    np.array([i['bbox'] for i in inst], np.float32).reshape(-1, 4))
      assert r['objects/label'][keep].tolist() == [i['bbox_label'] for i in inst]
      assert r['objects/is_crowd'][keep].astype(int).tolist() == [i['ignore_flag'] for i in inst]
      assert (r['height'], r['width']) == (info['height'], info['width'])
    trained = {ds.get_data_info(i)['img_id'] for i in range(len(ds))}  # after filter_data (none in test mode)
    if not test_mode:
      assert trained == set(src.meta['image_ids'][det_sources.train_indices(src.meta, d)].tolist())
      assert len(trained) < len(ours)
    else:
      assert trained == set(ours)
