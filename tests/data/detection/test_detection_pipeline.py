"""Detection iterators: the batch contract, boxes through resize and flip (hand-checked), canvas-grouped
training batches that resume exactly, and the exact eval pass on 8 fake CPU devices."""
import jax
import numpy as np
import pytest
from jax.sharding import Mesh

tf = pytest.importorskip('tensorflow')
pytest.importorskip('tensorflow_datasets')

import ml_collections  # pylint: disable=g-import-not-at-top

from configs import det_default  # pylint: disable=g-import-not-at-top
from hatnet_jax.data import stream  # pylint: disable=g-import-not-at-top
from hatnet_jax.data import testing  # pylint: disable=g-import-not-at-top
from hatnet_jax.data.detection import batching  # pylint: disable=g-import-not-at-top
from hatnet_jax.data.detection import pipeline as det_pipeline  # pylint: disable=g-import-not-at-top
from hatnet_jax.data.detection import records  # pylint: disable=g-import-not-at-top
from hatnet_jax.data.detection import sources as det_sources  # pylint: disable=g-import-not-at-top
from hatnet_jax.data.detection import transforms as det_transforms  # pylint: disable=g-import-not-at-top
from hatnet_jax.data.segmentation import transforms as seg_transforms  # pylint: disable=g-import-not-at-top
from tests.data.detection import fake_coco  # pylint: disable=g-import-not-at-top

MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def small_config(**kw):
  d = det_default.data_config()
  d.update(dict(scale=(96, 64), canvases=((64, 96), (96, 64)), max_boxes=6, prefetch=1, threads=2))
  d.update(kw)
  return d


def config(d, batch=8, seed=0):
  return ml_collections.ConfigDict(dict(seed=seed, batch_size=batch, data=d))


@pytest.fixture(scope='module')
def mesh():
  assert jax.device_count() == 8
  return Mesh(np.array(jax.devices()), ('data',))


@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
  d = small_config(dataset='digit_boxes/small', data_dir=str(tmp_path_factory.mktemp('tfds')), cache=True)
  det_sources.dataset_info(d)
  return d


def take(it, n):
  out = [jax.device_get(next(it)) for _ in range(n)]
  it.close()
  return out


def expected_boxes(rec, flip):
  """mmdet's arithmetic in numpy float32: kept boxes x (new_w / w, new_h / h), clipped, then flipped."""
  h, w = int(rec['height']), int(rec['width'])
  nh, nw = det_transforms.resized_size(h, w, (96, 64))
  keep = rec['objects/kept']
  b = rec['objects/bbox'][keep] * np.array([nw / w, nh / h] * 2, np.float32)
  b = np.clip(b, 0, np.array([nw, nh, nw, nh], np.float32))
  if flip:
    b = np.stack([nw - b[:, 2], b[:, 1], nw - b[:, 0], b[:, 3]], 1)
  return b, rec['objects/label'][keep], rec['objects/is_crowd'][keep], (nh, nw)


def resized_normalised(rec, size):
  img = seg_transforms.resize_bilinear(tf.io.decode_png(rec['image'], channels=3), *size).numpy()
  return (img.astype(np.float32) / 255.0 - MEAN) / STD


def check_row(batch, row, rec, flip, max_boxes):
  boxes, labels, crowd, (nh, nw) = expected_boxes(rec, flip)
  n = len(boxes)
  np.testing.assert_array_equal(batch['boxes'][row, :n], boxes)
  assert np.all(batch['boxes'][row, n:] == 0)
  assert batch['labels'][row].tolist() == labels.tolist() + [-1] * (max_boxes - n)
  assert batch['box_valid'][row].tolist() == (~crowd).tolist() + [False] * (max_boxes - n)
  assert batch['crowd'][row].tolist() == crowd.tolist() + [False] * (max_boxes - n)
  assert batch['image_size'][row].tolist() == [nh, nw]
  assert batch['orig_size'][row].tolist() == [rec['height'], rec['width']]
  np.testing.assert_allclose(batch['scale'][row], np.float32([nh / rec['height'], nw / rec['width']]))
  assert batch['image_id'][row] == rec['image_id']
  want = resized_normalised(rec, (nh, nw))
  np.testing.assert_allclose(batch['image'][row, :nh, :nw], want[:, ::-1] if flip else want, atol=1e-5)
  assert np.all(batch['image'][row, nh:] == 0) and np.all(batch['image'][row, :, nw:] == 0)


def test_hand_checked_boxes_through_resize_flip_and_padding():
  # 40x30 (WxH) fit into (80, 60): s = 2 -> 80x60. Box A (4, 6, 20, 18) -> (8, 12, 40, 36), flipped (40, 12, 72, 36);
  # crowd B (30.25, 20, 40.5, 30) -> (60.5, 40, 81, 60), clipped to x2 = 80, flipped (0, 40, 19.5, 60); C is not kept.
  objects = [dict(id=1, bbox=(4, 6, 20, 18), label=1, category_id=2, is_crowd=False, area=1.0, kept=True,
                  segmentation=''),
             dict(id=2, bbox=(30.25, 20, 40.5, 30), label=2, category_id=3, is_crowd=True, area=1.0, kept=True,
                  segmentation=''),
             dict(id=3, bbox=(1, 1, 1.5, 9), label=0, category_id=1, is_crowd=False, area=1.0, kept=False,
                  segmentation='')]
  img = testing.make_image(np.random.default_rng(0), 40, 30)
  ex = records.example(testing.encode(img, 'PNG'), 7, 'a.png', 30, 40, objects)
  serialized = tf.constant(records.features('png').serialize_example(ex))
  d = small_config(scale=(80, 60), max_boxes=4)
  outs = {}
  for flip in (False, True):
    d.hflip_prob = 1.0 if flip else 0.0
    out = det_transforms.DetTransform(d, train=True)(serialized, tf.constant([1, 2], tf.int64),
                                                     tf.constant([64, 96]))
    outs[flip] = {k: v.numpy() for k, v in out.items()}
  a, b = outs[False], outs[True]
  np.testing.assert_array_equal(a['boxes'], [[8, 12, 40, 36], [60.5, 40, 80, 60], [0, 0, 0, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(b['boxes'], [[40, 12, 72, 36], [0, 40, 19.5, 60], [0, 0, 0, 0], [0, 0, 0, 0]])
  for o in (a, b):
    assert o['labels'].tolist() == [1, 2, -1, -1] and o['box_valid'].tolist() == [True, False, False, False]
    assert o['crowd'].tolist() == [False, True, False, False] and o['image_id'] == 7
    assert o['image_size'].tolist() == [60, 80] and o['orig_size'].tolist() == [30, 40]
    assert o['scale'].tolist() == [2.0, 2.0] and o['image'].shape == (64, 96, 3)
    assert np.all(o['image'][60:] == 0) and np.all(o['image'][:, 80:] == 0)
  np.testing.assert_array_equal(b['image'][:60, :80], a['image'][:60, :80][:, ::-1])
  # A ratio that is not a whole number: 47x30 into (80, 60): s = 80 / 47, 80x51, scale_factor (51 / 30, 80 / 47).
  ex = records.example(testing.encode(testing.make_image(np.random.default_rng(1), 47, 30), 'PNG'), 8, 'b.png', 30,
                       47, objects[:1])
  d.hflip_prob = 0.0
  out = det_transforms.DetTransform(d, train=False)(tf.constant(records.features('png').serialize_example(ex)),
                                                    tf.constant([0, 0], tf.int64), tf.constant([64, 96]))
  sx, sy = np.float32(80 / 47), np.float32(51 / 30)
  np.testing.assert_array_equal(out['boxes'].numpy()[0], np.float32([4, 6, 20, 18]) * np.array([sx, sy, sx, sy]))
  assert out['image_size'].numpy().tolist() == [51, 80] and out['scale'].numpy().tolist() == [sy, sx]


def test_train_batches_follow_the_contract(scenes, mesh):
  it = det_pipeline.create_train_iterator(config(scenes), mesh)
  plan = it.plan
  assert it.steps_per_epoch == det_pipeline.steps_per_epoch(config(scenes)) == plan.steps_per_epoch
  assert plan.steps_per_epoch == sum(n // 8 for n in np.bincount(plan.groups))  # 96 scenes, full batches only
  batches = take(it, 2)
  b = batches[0]
  assert sorted(b) == sorted(det_pipeline.KEYS)  # (device_get sorts a dict's keys; eval checks the order)
  canvas = b['image'].shape[1:3]
  assert canvas in ((64, 96), (96, 64)) and b['image'].shape == (8,) + canvas + (3,)
  dtypes = dict(image=np.float32, boxes=np.float32, labels=np.int32, box_valid=np.bool_, crowd=np.bool_,
                image_size=np.int32, scale=np.float32, orig_size=np.int32, image_id=np.int32, mask=np.int32)
  shapes = dict(boxes=(8, 6, 4), labels=(8, 6), box_valid=(8, 6), crowd=(8, 6), image_size=(8, 2), scale=(8, 2),
                orig_size=(8, 2), image_id=(8,), mask=(8,))
  for k, v in b.items():
    assert v.dtype == dtypes[k], k
    assert k == 'image' or v.shape == shapes[k], k
  assert np.all(b['mask'] == 1)
  src = det_sources.open_split(scenes, 'train')
  flips = set()
  for step, batch in enumerate(batches):
    indices, c = plan.batches(step, 1)[0]
    assert batch['image'].shape[1:3] == tuple(scenes.canvases[c])
    for row, rec in enumerate(src.read(indices)):
      boxes = expected_boxes(rec, False)[0]
      flip = not np.array_equal(batch['boxes'][row, :len(boxes)], boxes)
      flips.add(flip)
      check_row(batch, row, rec, flip, 6)
  assert flips == {False, True}


def test_train_stream_is_deterministic_and_resumes_exactly(scenes, mesh):
  c = config(scenes)
  first = take(det_pipeline.create_train_iterator(c, mesh), 3)
  again = take(det_pipeline.create_train_iterator(c, mesh), 3)
  for x, y in zip(first, again):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  it = det_pipeline.create_train_iterator(c, mesh, start_step=2)
  resumed = take(it, 1)[0]
  assert it.get_state() == {'step': 3}
  for k in resumed:
    np.testing.assert_array_equal(resumed[k], first[2][k])
  other = take(det_pipeline.create_train_iterator(config(scenes, seed=1), mesh), 1)[0]
  assert not np.array_equal(other['image_id'], first[0]['image_id'])


def _bucket_filling(plan, epoch):
  """AspectRatioBatchSampler's rule, independently: walk the epoch's order, emit a bucket when full."""
  n = len(plan.eligible)
  perm = stream.stream_indices(tf.range(epoch * n, (epoch + 1) * n, dtype=tf.int64), n, plan.seed).numpy()
  buckets, out = {}, []
  for slot in perm:
    g = int(plan.groups[slot])
    buckets.setdefault(g, []).append(int(plan.eligible[slot]))
    if len(buckets[g]) == plan.batch:
      out.append((buckets.pop(g), g))
  return out


def test_train_plan_is_bucket_filling_per_epoch_and_resumes_across_epochs():
  rng = np.random.default_rng(0)
  canvas_of = rng.integers(0, 3, size=60)
  canvas_of[rng.choice(60, 5, replace=False)] = -1  # records trained on never include these
  eligible = np.nonzero(canvas_of >= 0)[0]
  plan = batching.TrainPlan(eligible, canvas_of, 3, 4, seed=5)
  counts = np.bincount(canvas_of[eligible], minlength=3)
  assert plan.steps_per_epoch == int(np.sum(counts // 4))
  s = plan.steps_per_epoch
  every = plan.batches(0, 3 * s)
  for e in range(3):
    got = [(i.tolist(), c) for i, c in every[e * s:(e + 1) * s]]
    assert got == _bucket_filling(plan, e)
    seen = [x for i, _ in got for x in i]
    assert len(seen) == len(set(seen)) and all(canvas_of[x] == c for i, c in got for x in i)
  for k in (1, s - 1, s, s + 1, 2 * s + 2):
    resumed = plan.batches(k, 1)[0]
    assert resumed[1] == every[k][1] and resumed[0].tolist() == every[k][0].tolist()
  assert [i.tolist() for i, _ in batching.TrainPlan(eligible, canvas_of, 3, 4, seed=6).batches(0, 2)] != \
      [i.tolist() for i, _ in every[:2]]


def test_eval_pass_is_exact_over_8_devices(scenes, mesh):
  c = config(scenes)
  c.data.eval_batch_size = 16  # 40 test scenes in 2 canvas groups: padded last batches
  it = det_pipeline.create_eval_iterator(c, mesh)
  src = det_sources.open_split(scenes, 'test')
  assert len({p.canvas for p in it.plan}) == 2
  seen = []
  for k, batch in enumerate(it):
    plan = it.plan[k]
    assert batch['image'].shape == (16,) + tuple(scenes.canvases[plan.canvas]) + (3,)
    assert len(batch['image'].addressable_shards) == 8 and tuple(batch) == det_pipeline.KEYS
    batch = jax.device_get(batch)
    np.testing.assert_array_equal(batch['mask'], plan.mask.astype(np.int32))
    for row in np.nonzero(batch['mask'])[0]:
      rec = src.read([plan.indices[row]])[0]
      check_row(batch, row, rec, False, 6)
      seen.append(int(batch['image_id'][row]))
  assert sorted(seen) == list(range(1, 41)) and len(it) == k + 1  # every image exactly once


def test_host_rows_do_not_depend_on_the_process_layout(scenes):
  src = det_sources.open_split(scenes, 'test')
  plan = batching.eval_plan(det_pipeline.check_split(src, scenes, np.arange(len(src))), 8)
  whole = list(det_pipeline.eval_dataset(src, scenes, plan, 0, 8, threads=1).take(2).as_numpy_iterator())
  parts = [list(det_pipeline.eval_dataset(src, scenes, plan, p * 2, p * 2 + 2, threads=1).take(2)
                .as_numpy_iterator()) for p in range(4)]
  train = det_sources.open_split(scenes, 'train')
  canvas_of = det_pipeline.check_split(train, scenes, np.arange(len(train)))
  tplan = batching.TrainPlan(np.arange(len(train)), canvas_of, 2, 8, seed=3)
  whole_t = list(det_pipeline.train_dataset(train, scenes, tplan, 3, 0, 8, 1, 2, threads=1).as_numpy_iterator())
  parts_t = [list(det_pipeline.train_dataset(train, scenes, tplan, 3, p * 4, p * 4 + 4, 1, 2, threads=1)
                  .as_numpy_iterator()) for p in range(2)]
  for w_all, p_all in ((whole, parts), (whole_t, parts_t)):
    for step, w in enumerate(w_all):
      for key in w:
        np.testing.assert_array_equal(np.concatenate([p[step][key] for p in p_all]), w[key])


def test_too_many_objects_or_no_canvas_is_an_error_naming_the_image(scenes, mesh):
  with pytest.raises(ValueError, match=r'config.data.max_boxes=1, e.g. \S+\.png \(image_id \d+.*set '
                                       r'config.data.max_boxes >= [2-9]'):
    det_pipeline.create_eval_iterator(config(small_config(dataset=scenes.dataset, data_dir=scenes.data_dir,
                                                          max_boxes=1)), mesh)
  with pytest.raises(ValueError, match=r'fit no canvas of config.data.canvases=\(\(64, 64\),\).*add a canvas'):
    det_pipeline.create_train_iterator(config(small_config(dataset=scenes.dataset, data_dir=scenes.data_dir,
                                                           canvases=((64, 64),))), mesh)
  with pytest.raises(ValueError, match='multiple of config.data.size_divisor=32'):
    det_transforms.check_canvases(((64, 90),), 32)


@pytest.fixture(scope='module')
def coco_small(tmp_path_factory):
  base = tmp_path_factory.mktemp('coco')
  manual = fake_coco.make(str(base / 'coco'))
  return small_config(manual_dir=manual, data_dir=str(base / 'tfds'), canvases=((64, 96), (96, 64)))


def test_coco_eval_batch_keeps_crowd_apart_and_skips_what_mmdet_skips(coco_small, mesh):
  c = config(coco_small)
  c.data.eval_batch_size = 8
  rows = {}
  src = det_sources.open_split(coco_small, 'validation')
  for batch in det_pipeline.create_eval_iterator(c, mesh):
    batch = jax.device_get(batch)
    for row in np.nonzero(batch['mask'])[0]:
      rows[int(batch['image_id'][row])] = {k: v[row] for k, v in batch.items()}
      i = int(np.nonzero(src.meta['image_ids'] == batch['image_id'][row])[0][0])
      rec = src.read([i])[0]
      nh, nw = det_transforms.resized_size(rec['height'], rec['width'], (96, 64))
      want = rec['objects/bbox'][rec['objects/kept']] * np.float32([nw / rec['width'], nh / rec['height']] * 2)
      np.testing.assert_array_equal(batch['boxes'][row, :len(want)], np.minimum(want, np.float32([nw, nh] * 2)))
  assert sorted(rows) == [139, 285, 632, 724]
  assert rows[139]['labels'][:3].tolist() == [1, 2, -1]  # person, toothbrush (crowd)
  assert rows[139]['box_valid'][:2].tolist() == [True, False] and rows[139]['crowd'][:2].tolist() == [False, True]
  assert rows[724]['labels'].tolist() == [-1] * 6  # its only box has w < 1: not an instance
  assert rows[632]['labels'].tolist() == [-1] * 6 and not rows[632]['box_valid'].any()


def test_corrupt_eval_image_names_the_file(tmp_path, mesh):
  manual = fake_coco.make(str(tmp_path / 'coco'))
  path = tmp_path / 'coco' / 'val2017' / f'{285:012d}.jpg'
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])  # the header still reads: preparation accepts it
  d = small_config(manual_dir=manual, data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(stream.CorruptImageError) as e:
    list(det_pipeline.create_eval_iterator(config(d), mesh))
  assert f'{285:012d}.jpg (image_id 285' in str(e.value) and "'validation'" in str(e.value), str(e.value)
