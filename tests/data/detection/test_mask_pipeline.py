"""Instance masks in the detection pipeline (config.data.with_masks): pixel-exact against mmdet 3.3.0's
LoadAnnotations(with_mask=True, poly2mask=True) -> Resize((1333, 800), keep_ratio) -> RandomFlip (forced) ->
Pad(size_divisor=32) on polygons, RLE, crowd and the digit-boxes demo; the batches (the switch off leaves them
unchanged, eval carries masks only when asked); the errors (a missing segmentation, an undecodable RLE, too
many objects)."""
import json

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

tf = pytest.importorskip('tensorflow')
pytest.importorskip('tensorflow_datasets')
pytest.importorskip('pycocotools')

from configs import retinanet_digits  # pylint: disable=g-import-not-at-top,wrong-import-position
from hatnet_jax.data import stream  # pylint: disable=g-import-not-at-top,wrong-import-position
from hatnet_jax.data import testing  # pylint: disable=g-import-not-at-top,wrong-import-position
from hatnet_jax.data.detection import masks as det_masks  # pylint: disable=g-import-not-at-top
from hatnet_jax.data.detection import pipeline as det_pipeline  # pylint: disable=g-import-not-at-top
from hatnet_jax.data.detection import records  # pylint: disable=g-import-not-at-top,wrong-import-position
from hatnet_jax.data.detection import sources as det_sources  # pylint: disable=g-import-not-at-top
from hatnet_jax.data.detection import transforms as det_transforms  # pylint: disable=g-import-not-at-top
from tests.data.detection import fake_coco  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests.data.detection.test_detection_pipeline import config, expected_boxes, small_config  # pylint: disable=g-import-not-at-top

SCALE = (1333, 800)


def _mmdet():
  from tests.references import mmseg_stub  # pylint: disable=g-import-not-at-top
  mmseg_stub.install()  # before mmdet imports mmcv.ops
  pytest.importorskip('mmdet')
  try:
    from mmdet.datasets import transforms  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    pytest.skip(f'mmdet does not import here: {e}')
  return transforms


def mmdet_reference(h, w, objects, scale, flip):
  """mmdet 3.3.0's results dict after LoadAnnotations(mask) -> Resize -> RandomFlip(forced) -> Pad(32), from the
  objects as CocoDataset.parse_data_info makes them (kept ones; 'mask' = the parsed segmentation)."""
  t = _mmdet()
  instances = [dict(bbox=list(o['bbox']), bbox_label=int(o['label']), ignore_flag=int(o['is_crowd']),
                    mask=json.loads(o['segmentation']) if isinstance(o['segmentation'], str) else o['segmentation'])
               for o in objects if o['kept']]
  results = dict(img=np.zeros((h, w, 3), np.uint8), img_shape=(h, w), ori_shape=(h, w), instances=instances)
  results = t.LoadAnnotations(with_bbox=True, with_label=True, with_mask=True, poly2mask=True)(results)
  results = t.Resize(scale=scale, keep_ratio=True)(results)
  if flip:
    results = t.RandomFlip(prob=1.0, direction='horizontal')(results)
  return t.Pad(size_divisor=32)(results)


def run_transform(serialized, d, flip, canvas, with_masks=True):
  d = d.copy_and_resolve_references()
  d.hflip_prob = 1.0 if flip else 0.0
  out = det_transforms.DetTransform(d, train=True, with_masks=with_masks)(
      tf.constant(serialized), tf.constant([0, 1], tf.int64), tf.constant(canvas, tf.int32))
  return {k: v.numpy() for k, v in out.items()}


def check_against_mmdet(out, ref, max_boxes):
  """Our packed masks / crowd / boxes against mmdet's results (pixel-exact; zero beyond the 32-padded size)."""
  want = ref['gt_masks'].masks
  n, (ph, pw) = len(want), ref['pad_shape'][:2]
  got = det_masks.unpack(out['masks'])
  assert got.shape[0] == max_boxes and got.shape[1] >= ph and got.shape[2] >= pw
  np.testing.assert_array_equal(got[:n, :ph, :pw], want.astype(bool))
  assert not got[n:].any() and not got[:, ph:].any() and not got[:, :, pw:].any()
  assert out['crowd'][:n].tolist() == ref['gt_ignore_flags'].tolist()
  assert out['box_valid'][:n].tolist() == (~ref['gt_ignore_flags']).tolist()
  np.testing.assert_array_equal(out['boxes'][:n], ref['gt_bboxes'].tensor.numpy())


def _obj(i, seg, crowd=False, kept=True, label=0, bbox=(2.0, 3.0, 30.0, 20.0)):
  return dict(id=100 + i, bbox=bbox, label=label, category_id=1, is_crowd=crowd, area=1.0, kept=kept,
              segmentation=seg)


def record(w, h, objects, seed=0, image_id=1):
  img = testing.make_image(np.random.default_rng(seed), w, h)
  return records.features('png').serialize_example(
      records.example(testing.encode(img, 'PNG'), image_id, 'x.png', h, w, objects))


def coco_objects(w, h):
  """Every kind of segmentation COCO holds, sized to a w x h image (and one object mmdet does not keep)."""
  from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top
  m = np.zeros((h, w), np.uint8, order='F')
  m[h // 4:h - 2, 1:w // 2] = 1
  compressed = mask_utils.encode(m)['counts'].decode('ascii')
  crowd = np.zeros((h, w), bool)
  crowd[1:h // 2, w // 3:] = True
  from hatnet_jax.data.demos import digit_boxes  # pylint: disable=g-import-not-at-top
  return [
      _obj(0, [[3.0, 2.0, w - 4.0, 5.0, w / 2, h - 3.0]], label=1),
      _obj(1, [[-6.0, -4.5, w / 2, -1.0, w + 9.0, h / 2, 4.0, h + 7.0]]),  # partly outside: clipped
      _obj(2, [[1.0, 1.0, 9.0, 1.0, 9.0, 9.0, 1.0, 9.0], [5.0, 5.0, 6.0], [w - 9.0, h - 9.0, w - 1.5, h - 9.0,
                                                                           w - 1.5, h - 1.5]], label=2),
      _obj(3, [[0.0, 0.0, 20.0, 0.0]], kept=False),  # not an instance: skipped, masks follow the kept order
      _obj(4, {'counts': compressed, 'size': [h, w]}),
      _obj(5, digit_boxes.rle(crowd), crowd=True),  # uncompressed RLE, a crowd region
      _obj(6, [[1.0, 2.0, 3.0, 4.0]]),  # no polygon of >= 6 coordinates: mmdet ignores it
  ]


@pytest.mark.parametrize('w, h', [(64, 48), (37, 50), (201, 150)])
def test_masks_equal_mmdets_load_resize_flip_pad(w, h):
  _mmdet()
  objects = coco_objects(w, h)
  d = small_config(scale=SCALE, max_boxes=8)
  ph, pw = det_transforms.padded_size(h, w, SCALE, 32)
  for flip in (False, True):
    ref = mmdet_reference(h, w, objects, SCALE, flip)
    out = run_transform(record(w, h, objects), d, flip, (ph, pw))
    assert out['masks'].shape == (8, ph, pw // 8) and out['masks'].dtype == np.uint8
    check_against_mmdet(out, ref, 8)
    assert out['crowd'][:6].tolist() == [False, False, False, False, True, True]  # the last: mmdet's ignore
  bigger = run_transform(record(w, h, objects), d, True, (ph + 64, pw + 96))  # a larger canvas: zero beyond
  check_against_mmdet(bigger, ref, 8)


def test_images_without_instances_or_only_crowd():
  _mmdet()
  d = small_config(scale=SCALE, max_boxes=4)
  empty = run_transform(record(40, 30, []), d, True, (800, 1088))
  assert empty['masks'].shape == (4, 800, 136) and not empty['masks'].any() and not empty['box_valid'].any()
  crowd = [o for o in coco_objects(40, 30) if o['is_crowd']] + [_obj(9, '', kept=False)]  # '' never decoded
  out = run_transform(record(40, 30, crowd), d, False, (800, 1088))
  check_against_mmdet(out, mmdet_reference(30, 40, crowd, SCALE, False), 4)
  assert out['crowd'].tolist() == [True, False, False, False] and not out['box_valid'].any()


def test_switch_off_leaves_the_transform_unchanged():
  objects = coco_objects(64, 48)
  d = small_config(scale=(96, 64), max_boxes=8)
  off = run_transform(record(64, 48, objects), d, True, (64, 96), with_masks=False)
  on = run_transform(record(64, 48, objects), d, True, (64, 96))
  assert set(on) == set(off) | {'masks'}
  for k, v in off.items():
    if k in ('crowd', 'box_valid'):  # the object mmdet ignores for its masks is the only difference
      assert (v != on[k]).tolist() == [False] * 5 + [True] + [False] * 2
    else:
      np.testing.assert_array_equal(v, on[k], err_msg=k)


@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
  d = small_config(dataset='digit_boxes/small', data_dir=str(tmp_path_factory.mktemp('tfds')), cache=True)
  det_sources.dataset_info(d)
  return d


def test_digit_boxes_demo_scene_at_the_demos_scale(scenes):
  _mmdet()
  d = retinanet_digits.data_config(small=True)
  d.data_dir = scenes.data_dir
  src = det_sources.open_split(d, 'train')
  sizes = set()
  for i in range(6):
    rec = src.read([i])[0]
    h, w = int(rec['height']), int(rec['width'])
    objects = [dict(bbox=b.tolist(), label=l, is_crowd=c, kept=k, segmentation=s) for b, l, c, k, s in zip(
        rec['objects/bbox'], rec['objects/label'], rec['objects/is_crowd'], rec['objects/kept'],
        rec['objects/segmentation'])]
    out = run_transform(src.serialized_numpy([i])[0], d, False, (96, 96))
    ref = mmdet_reference(h, w, objects, tuple(d.scale), False)
    check_against_mmdet(out, ref, int(d.max_boxes))
    sizes.add((h, w) == tuple(out['image_size']))
    if (h, w) == tuple(out['image_size']):  # not resized: each digit's box is its mask's extent (the ink's)
      got = det_masks.unpack(out['masks'])
      for j in range(len(objects)):
        ys, xs = np.nonzero(got[j].any(1))[0], np.nonzero(got[j].any(0))[0]
        assert out['boxes'][j].tolist() == [xs[0], ys[0], xs[-1] + 1, ys[-1] + 1]
  assert sizes == {True, False}  # both a scene kept at its size and a resized one


@pytest.fixture(scope='module')
def mesh():
  assert jax.device_count() == 8
  return Mesh(np.array(jax.devices()), ('data',))


def take(it, n):
  out = [jax.device_get(next(it)) for _ in range(n)]
  it.close()
  return out


def test_train_batches_carry_masks_only_with_the_switch(scenes, mesh):
  on = scenes.copy_and_resolve_references()
  on.with_masks = True
  plain = take(det_pipeline.create_train_iterator(config(scenes), mesh), 1)
  it = det_pipeline.create_train_iterator(config(on), mesh)
  plan, masked = it.plan, take(it, 1)
  src = det_sources.open_split(scenes, 'train')
  for step, (a, b) in enumerate(zip(plain, masked)):
    assert 'masks' not in a and sorted(b) == sorted(det_pipeline.MASK_KEYS)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # the switch changes nothing else
    hc, wc = b['image'].shape[1:3]
    assert b['masks'].shape == (8, 6, hc, wc // 8) and b['masks'].dtype == np.uint8
    for row, rec in enumerate(src.read(plan.batches(step, 1)[0][0])):
      nh, nw = b['image_size'][row]
      unflipped = expected_boxes(rec, False)[0]
      flip = not np.array_equal(b['boxes'][row, :len(unflipped)], unflipped)
      want, _ = det_masks.canvas_masks(rec['objects/segmentation'], rec['objects/id'], rec['image_id'],
                                       rec['height'], rec['width'], nh, nw, flip, hc, wc, max_boxes=6)
      np.testing.assert_array_equal(b['masks'][row], want)
      assert b['masks'][row, :len(unflipped)].any() and not b['masks'][row, len(unflipped):].any()


def test_eval_carries_masks_only_when_asked(scenes, mesh):
  on = scenes.copy_and_resolve_references()
  on.with_masks = True
  c = config(on)
  c.data.eval_batch_size = 8
  plain = next(iter(det_pipeline.create_eval_iterator(c, mesh)))
  assert tuple(plain) == det_pipeline.KEYS  # config.data.with_masks is the training switch
  it = det_pipeline.create_eval_iterator(c, mesh, masks=True)
  batch = next(iter(it))
  assert tuple(batch) == det_pipeline.MASK_KEYS and len(batch['masks'].addressable_shards) == 8
  batch = jax.device_get(batch)
  src = det_sources.open_split(scenes, 'test')
  for row, i in enumerate(it.plan[0].indices):
    rec = src.read([i])[0]
    nh, nw = batch['image_size'][row]
    want, _ = det_masks.canvas_masks(rec['objects/segmentation'], rec['objects/id'], rec['image_id'], rec['height'],
                                     rec['width'], nh, nw, False, *batch['image'].shape[1:3], max_boxes=6)
    np.testing.assert_array_equal(batch['masks'][row], want)
  it.close()


def _drop_segmentation(split, data):
  if split == 'train':
    for a in data['annotations']:
      if a['id'] == 1:  # image 397133's person
        a['segmentation'] = []  # stored as '' (no segmentation)


@pytest.fixture(scope='module')
def coco_no_segmentation(tmp_path_factory):
  base = tmp_path_factory.mktemp('coco_noseg')
  manual = fake_coco.make(str(base / 'coco'), edit=_drop_segmentation)
  return small_config(manual_dir=manual, data_dir=str(base / 'tfds'), with_masks=True)


def test_missing_segmentation_and_bad_rle_are_errors_naming_the_image(coco_no_segmentation):
  one = Mesh(np.array(jax.devices()[:1]), ('data',))
  c = config(coco_no_segmentation, batch=2)
  it = det_pipeline.create_train_iterator(c, one)  # 4 landscape images in canvas 0: 2 batches per epoch
  with pytest.raises(RuntimeError, match=r'Training data could not be read at step \d: 000000397133.jpg \(image_id '
                                         r"397133.*annotation id 1\) has no segmentation \(objects/segmentation is "
                                         r"''\).*or set config.data.with_masks=False"):
    for _ in range(2 * it.steps_per_epoch):
      next(it)
  it.close()
  c.data.with_masks = False  # the same data without masks: RetinaNet's batches
  take(det_pipeline.create_train_iterator(c, one), 2 * it.steps_per_epoch)
  c.data.eval_batch_size = 2  # validation's crowd 103 has the compressed RLE 'abc', which covers no 48 x 64 image
  with pytest.raises(stream.CorruptImageError, match=r'000000000139.jpg \(image_id 139.*annotation id 103\): its '
                                                     r'RLE does not decode'):
    list(det_pipeline.create_eval_iterator(c, one, masks=True))
  assert len(list(det_pipeline.create_eval_iterator(c, one))) == 3  # without masks it evaluates (2 canvases)


def test_too_many_objects_keeps_its_error_and_canvas_widths_must_pack(scenes, mesh):
  on = scenes.copy_and_resolve_references()
  on.update(dict(with_masks=True, max_boxes=1))
  with pytest.raises(ValueError, match=r'config.data.max_boxes=1, e.g. \S+\.png \(image_id \d+.*set '
                                       r'config.data.max_boxes >= [2-9]'):
    det_pipeline.create_train_iterator(config(on), mesh)
  on.update(dict(max_boxes=6, size_divisor=4, canvases=((64, 100), (100, 64))))
  with pytest.raises(ValueError, match='every canvas width must be a multiple of 8'):
    det_pipeline.create_train_iterator(config(on), mesh)
