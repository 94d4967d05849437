"""Segmentation data: ADE20K builder on a fake manual dir, layout errors, mmseg transforms, the digit
scenes demo, resumable training stream and the shape-grouped exact eval pass on 8 fake CPU devices."""
import io
import os

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh

tf = pytest.importorskip('tensorflow')
pytest.importorskip('tensorflow_datasets')

from configs import seg_default, seg_digits
from hatnet_jax.data import testing  # pylint: disable=g-import-not-at-top
from hatnet_jax.data.demos import digit_scenes  # pylint: disable=g-import-not-at-top
from hatnet_jax.data.segmentation import ade20k  # pylint: disable=g-import-not-at-top
from hatnet_jax.data.segmentation import pipeline as seg_pipeline  # pylint: disable=g-import-not-at-top
from hatnet_jax.data.segmentation import sources as seg_sources  # pylint: disable=g-import-not-at-top
from hatnet_jax.data.segmentation import transforms as seg_transforms  # pylint: disable=g-import-not-at-top

ADE_SIZES = [(40, 30), (52, 36), (33, 47)]  # (width, height) of the fake images


def png(arr):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, 'PNG')
  return buf.getvalue()


def make_fake_ade(root, n_train=6, n_val=4, seed=0):
  """ADEChallengeData2016 layout with JPEG images and blocky uint8 label PNGs (values 0..150)."""
  rng = np.random.default_rng(seed)
  for split, prefix, n in (('training', 'ADE_train', n_train), ('validation', 'ADE_val', n_val)):
    os.makedirs(os.path.join(root, 'images', split), exist_ok=True)
    os.makedirs(os.path.join(root, 'annotations', split), exist_ok=True)
    for i in range(n):
      w, h = ADE_SIZES[i % len(ADE_SIZES)]
      stem = f'{prefix}_{i + 1:08d}'
      with open(os.path.join(root, 'images', split, stem + '.jpg'), 'wb') as f:
        f.write(testing.make_jpeg(rng, w, h))
      low = rng.integers(0, 151, size=(4, 4), dtype=np.uint8)
      mask = np.kron(low, np.ones((h // 4 + 1, w // 4 + 1), np.uint8))[:h, :w]
      with open(os.path.join(root, 'annotations', split, stem + '.png'), 'wb') as f:
        f.write(png(mask))
  return root


def data_config(**kw):
  d = seg_default.data_config()
  d.prefetch = 1
  d.threads = 2
  d.update(kw)
  return d


def config(d, batch=8, seed=0):
  return ml_collections.ConfigDict(dict(seed=seed, batch_size=batch, data=d))


@pytest.fixture(scope='module')
def mesh():
  assert jax.device_count() == 8
  return Mesh(np.array(jax.devices()), ('data',))


@pytest.fixture(scope='module')
def ade(tmp_path_factory):
  base = tmp_path_factory.mktemp('ade')
  manual = make_fake_ade(str(base / 'ADEChallengeData2016'))
  d = data_config(dataset='ade20k', manual_dir=manual, data_dir=str(base / 'tfds'), crop_size=32,
                  scale=(128, 32))
  from hatnet_jax.tools import prepare_data as prepare  # pylint: disable=g-import-not-at-top
  assert prepare.main(['--dataset=ade20k', f'--manual_dir={manual}', f'--data_dir={d.data_dir}']) == 0
  assert prepare.main(['--dataset=ade20k', f'--manual_dir={base / "none"}',
                       f'--data_dir={base / "tfds2"}']) == 1
  return d


@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
  d = seg_digits.data_config(small=True)
  d.data_dir = str(tmp_path_factory.mktemp('tfds'))
  d.prefetch = 1
  d.threads = 2
  seg_sources.dataset_info(d)
  return d


# ------------------------------------------------------------------------------------------------
# ADE20K builder and layout errors
# ------------------------------------------------------------------------------------------------


def test_ade20k_prepared_original_bytes_and_reduce_zero_label(ade):
  info = seg_sources.dataset_info(ade)
  assert (info.name, info.num_classes, info.num_train, info.num_eval) == ('ade20k', 150, 6, 4)
  assert info.class_names[:3] == ('wall', 'building', 'sky') and info.class_names[-1] == 'flag'
  assert info.ignore_index == 255 and info.eval_split == 'validation'
  src = seg_sources.open_split(ade, 'validation')
  rows = src.read_numpy(range(len(src)))
  assert sorted(r[2] for r in rows) == [f'ADE_val_{i:08d}' for i in range(1, 5)]
  for img, mask, name in rows:
    with open(os.path.join(ade.manual_dir, 'images', 'validation', name + '.jpg'), 'rb') as f:
      assert img == f.read()  # original JPEG bytes, not re-encoded
    with open(os.path.join(ade.manual_dir, 'annotations', 'validation', name + '.png'), 'rb') as f:
      assert mask == f.read()
    raw = tf.io.decode_png(mask)[..., 0].numpy().astype(np.int32)
    got = seg_transforms.read_label(tf.constant(mask)).numpy()
    np.testing.assert_array_equal(got, np.where(raw == 0, 255, raw - 1))
  assert src.image_sizes().tolist() == [list(ade20k.image_size(r[0])) for r in rows]


@pytest.mark.parametrize('breakage, expect', [
    ('no_dir', ['missing directory', 'annotations/validation', 'images/training/*.jpg']),
    ('no_annotation', ['has no annotation', 'ADE_val_00000002.jpg', 'ADE_val_00000002.png']),
    ('no_image', ['has no image', 'ADE_val_00000009.png']),
    ('size', ['ADE_val_00000001', 'has size 41x30', 'image is 40x30']),
    ('range', ['ADE_val_00000003', 'label values [151, 200]', 'outside [0, 150]']),
])
def test_ade20k_layout_errors_name_the_file(tmp_path, breakage, expect):
  root = make_fake_ade(str(tmp_path / 'ADEChallengeData2016'), n_train=1, n_val=3)
  ann = os.path.join(root, 'annotations', 'validation')
  if breakage == 'no_dir':
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(ann)
  elif breakage == 'no_annotation':
    os.remove(os.path.join(ann, 'ADE_val_00000002.png'))
  elif breakage == 'no_image':
    with open(os.path.join(ann, 'ADE_val_00000009.png'), 'wb') as f:
      f.write(png(np.zeros((4, 4), np.uint8)))
  elif breakage == 'size':
    with open(os.path.join(ann, 'ADE_val_00000001.png'), 'wb') as f:
      f.write(png(np.zeros((30, 41), np.uint8)))
  elif breakage == 'range':
    bad = np.zeros((47, 33), np.uint8)
    bad[0, :3] = [151, 200, 150]
    with open(os.path.join(ann, 'ADE_val_00000003.png'), 'wb') as f:
      f.write(png(bad))
  with pytest.raises(Exception) as e:
    list(ade20k.iter_examples(root, 'validation'))
  for text in expect:
    assert text in str(e.value), str(e.value)


def test_ade20k_missing_manual_dir_names_layout_and_path(tmp_path):
  d = data_config(dataset='ade20k', manual_dir=str(tmp_path / 'nowhere'), data_dir=str(tmp_path / 't'))
  with pytest.raises(FileNotFoundError) as e:
    seg_sources.dataset_info(d)
  assert str(tmp_path / 'nowhere') in str(e.value) and 'annotations/training' in str(e.value)


def test_ade20k_from_zip(tmp_path):
  import zipfile  # pylint: disable=g-import-not-at-top
  root = make_fake_ade(str(tmp_path / 'ADEChallengeData2016'), n_train=2, n_val=1)
  zpath = tmp_path / 'zipdir' / ade20k.ZIP_NAME
  zpath.parent.mkdir()
  with zipfile.ZipFile(zpath, 'w') as z:
    for dirpath, _, files in os.walk(root):
      for f in files:
        full = os.path.join(dirpath, f)
        z.write(full, os.path.relpath(full, str(tmp_path)))
  got = list(ade20k.iter_examples(str(zpath.parent), 'train'))
  assert [k for k, _ in got] == ['ADE_train_00000001', 'ADE_train_00000002']
  with open(os.path.join(root, 'images', 'training', 'ADE_train_00000002.jpg'), 'rb') as f:
    assert got[1][1]['image'] == f.read()


# ------------------------------------------------------------------------------------------------
# Transforms
# ------------------------------------------------------------------------------------------------


def test_resize_sizes_follow_mmcv_rescale_rule():
  # mmcv.rescale_size((w, h), (2048, 512)): s = min(2048 / long, 512 / short); int(x * s + 0.5).
  assert seg_transforms.rescale_size(375, 500, (2048, 512)) == (512, 683)
  assert seg_transforms.rescale_size(512, 683, (2048, 512)) == (512, 683)
  assert seg_transforms.rescale_size(1000, 200, (2048, 512)) == (2048, 410)
  assert seg_transforms.rescale_size(300, 2000, (1024, 256)) == (154, 1024)
  assert seg_transforms.ratio_scale((2048, 512), 0.75) == (1536, 384)
  for h, w in [(375, 500), (31, 1), (1000, 200), (481, 640), (7, 5)]:
    for s in [(2048, 512), (1536, 384), (1023, 255)]:
      want = seg_transforms.rescale_size(h, w, s)
      got = seg_transforms.tf_rescale_size(h, w, max(s), min(s))
      assert (int(got[0]), int(got[1])) == want
  # The train transform with a fixed ratio: the valid (resized, uncropped) size is the rule's.
  d = data_config(crop_size=256, scale=(96, 48), ratio_range=(1.0, 1.0), photometric=False)
  t = seg_transforms.TrainTransform(d)
  for w, h in [(40, 30), (30, 100), (64, 64)]:
    img = tf.constant(testing.make_jpeg(np.random.default_rng(0), w, h))
    mask = tf.constant(png(np.ones((h, w), np.uint8)))
    out, lab, valid = t(img, mask, tf.constant([1, 2], tf.int64))
    assert tuple(valid.numpy()) == seg_transforms.rescale_size(h, w, (96, 48))
    assert out.shape == (256, 256, 3) and lab.shape == (256, 256)
    vh, vw = valid.numpy()
    assert np.all(lab.numpy()[vh:] == 255) and np.all(lab.numpy()[:, vw:] == 255)
    assert np.all(lab.numpy()[:vh, :vw] == 0)  # stored 1 -> class 0


def test_align_resize_sizes():
  assert seg_transforms.align_size(512, 683, (2048, 512), 32) == (512, 704)
  assert seg_transforms.align_size(375, 500, (2048, 512), 32) == (512, 704)
  assert seg_transforms.align_size(1000, 200, (2048, 512), 32) == (2048, 416)
  assert seg_transforms.align_size(256, 256, (2048, 512), 32) == (512, 512)
  d = data_config(scale=(2048, 512), align=32)
  t = seg_transforms.EvalTransform(d)
  for w, h in [(500, 375), (50, 90)]:
    img = tf.constant(testing.make_jpeg(np.random.default_rng(0), w, h))
    mask = tf.constant(png(np.full((h, w), 3, np.uint8)))
    aligned = seg_transforms.align_size(h, w, (2048, 512), 32)
    out, lab, orig = t(img, mask, tf.constant(aligned), tf.constant([h + 2, w]))
    assert out.shape == aligned + (3,) and tuple(orig.numpy()) == (h, w)
    assert lab.shape == (h + 2, w) and np.all(lab.numpy()[:h] == 2) and np.all(lab.numpy()[h:] == 255)


def _crop_ok(window, ratio=0.75):
  vals, cnt = np.unique(window, return_counts=True)
  cnt = cnt[vals != 255]
  return len(cnt) > 1 and cnt.max() / cnt.sum() < ratio


def test_random_crop_cat_max_ratio_takes_first_acceptable_crop():
  # 100x100: class 0 everywhere, a 24x24 square of class 1 and a band of ignore. Most 40x40 crops
  # are dominated by class 0.
  lab = np.zeros((100, 100), np.int32)
  lab[60:84, 10:34] = 1
  lab[:, 90:] = 255
  img = np.zeros((100, 100, 3), np.uint8)
  accepted = 0
  for s in range(40):
    seed = tf.constant([7, s], tf.int64)
    _, crop = seg_transforms.random_crop(tf.constant(img), tf.constant(lab), seed, 40, 40, 0.75)
    offsets = seg_transforms.crop_offsets(seed, 100, 100, 40, 40, 11).numpy()
    oks = [_crop_ok(lab[t:t + 40, l:l + 40]) for t, l in offsets[:10]]
    first = oks.index(True) if any(oks) else 10  # mmseg: else the 11th, unchecked, sample
    t, l = offsets[first]
    np.testing.assert_array_equal(crop.numpy(), lab[t:t + 40, l:l + 40])
    if any(oks):
      assert _crop_ok(crop.numpy())  # never a class above 75% when a checked crop allowed it
      accepted += 1
  assert accepted >= 20  # and the constraint actually changes the crops
  plain = sum(_crop_ok(lab[t:t + 40, l:l + 40]) for t, l in seg_transforms.crop_offsets(
      tf.constant([7, 0], tf.int64), 100, 100, 40, 40, 200).numpy())
  assert plain < 0.5 * 200


def test_photometric_distortion_is_deterministic_and_uint8():
  img = tf.constant(testing.make_image(np.random.default_rng(0), 24, 16))
  outs = [seg_transforms.photometric_distortion(img, tf.constant([3, s], tf.int64)).numpy()
          for s in range(6)]
  again = seg_transforms.photometric_distortion(img, tf.constant([3, 0], tf.int64)).numpy()
  np.testing.assert_array_equal(outs[0], again)
  assert all(o.dtype == np.uint8 and o.shape == (16, 24, 3) for o in outs)
  assert len({o.tobytes() for o in outs}) > 1


# ------------------------------------------------------------------------------------------------
# Digit scenes
# ------------------------------------------------------------------------------------------------


def test_digit_scenes_labels_come_from_the_pasted_digits(scenes):
  info = seg_sources.dataset_info(scenes)
  assert (info.num_classes, info.num_train, info.num_eval, info.eval_split) == (11, 96, 40, 'test')
  from hatnet_jax.data.demos import digits  # pylint: disable=g-import-not-at-top
  images, labels, is_test = digits.load_arrays()
  test_imgs, test_labels = digit_scenes.split_digits('test')
  np.testing.assert_array_equal(test_imgs, images[is_test])
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for i in range(6):
    img, mask, placed = digit_scenes.make_scene('test', i, test_imgs, test_labels)
    assert img.shape[:2] == mask.shape and set(mask.shape) <= set(digit_scenes.SIZES)
    classes = set(np.unique(mask).tolist()) - {0, 1}
    assert classes <= {2 + c for _, c, *_ in placed}
    k, c, top, left, s = placed[-1]  # the last digit is on top of the others
    v = np.asarray(Image.fromarray(test_imgs[k]).resize((s, s), Image.BILINEAR))
    h, w = mask.shape
    for y in range(max(top, 0), min(top + s, h)):
      for x in range(max(left, 0), min(left + s, w)):
        if v[y - top, x - left] > digit_scenes.HIGH:
          assert mask[y, x] == 2 + c
  # Stored scenes are the generated ones; labels read with reduce_zero_label: digit d -> class 1 + d.
  src = seg_sources.open_split(scenes, 'test')
  img_b, mask_b, name = src.read_numpy([0])[0]
  k = int(name.split('_')[1])
  img, mask, _ = digit_scenes.make_scene('test', k, test_imgs, test_labels)
  np.testing.assert_array_equal(tf.io.decode_png(img_b).numpy(), img)
  got = seg_transforms.read_label(tf.constant(mask_b)).numpy()
  np.testing.assert_array_equal(got, np.where(mask == 0, 255, mask.astype(np.int32) - 1))


# ------------------------------------------------------------------------------------------------
# Iterators
# ------------------------------------------------------------------------------------------------


def take(it, n):
  return [jax.device_get(next(it)) for _ in range(n)]


def test_train_batches_deterministic_and_resume_exactly(scenes, mesh):
  c = config(scenes, batch=8)
  first = take(seg_pipeline.create_train_iterator(c, mesh), 3)
  b = first[0]
  crop = c.data.crop_size  # the demo's (configs/seg_digits.py)
  assert b['image'].shape == (8, crop, crop, 3) and b['image'].dtype == np.float32
  assert b['label'].shape == (8, crop, crop) and b['label'].dtype == np.int32
  assert set(np.unique(b['label']).tolist()) <= set(range(11)) | {255}
  again = take(seg_pipeline.create_train_iterator(c, mesh), 3)
  for x, y in zip(first, again):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  it = seg_pipeline.create_train_iterator(c, mesh, start_step=2)
  resumed = take(it, 1)[0]
  assert it.get_state() == {'step': 3}
  for k in resumed:
    np.testing.assert_array_equal(resumed[k], first[2][k])
  other = take(seg_pipeline.create_train_iterator(config(scenes, batch=8, seed=1), mesh), 1)[0]
  assert not np.array_equal(other['label'], first[0]['label'])


def test_ade20k_train_batch_padded_with_ignore(ade, mesh):
  # Images of 30-47 px with scale (128, 32): resized short side 16-32 < crop 32 -> padding.
  b = take(seg_pipeline.create_train_iterator(config(ade, batch=8), mesh), 1)[0]
  assert b['image'].shape == (8, 32, 32, 3) and b['label'].shape == (8, 32, 32)
  lab, img = b['label'], b['image']
  assert (lab == 255).any() and set(np.unique(lab).tolist()) <= set(range(150)) | {255}
  pad_rows = np.all(lab == 255, axis=2)
  assert np.all(img[pad_rows] == 0)  # padding is 0 after normalisation, as mmseg's Pad


def test_eval_pass_exact_over_8_devices_grouped_by_shape(scenes, mesh):
  c = config(scenes, batch=8)
  c.data.eval_batch_size = 16  # 40 images in 3 shape groups: several padded batches
  it = seg_pipeline.create_eval_iterator(c, mesh)
  src = seg_sources.open_split(scenes, 'test')
  sizes = src.image_sizes()
  assert len(it.groups) >= 2
  seen = []
  for k, batch in enumerate(it):
    plan = it.plan[k]
    assert batch['image'].shape == (16,) + plan.aligned + (3,)
    assert batch['label'].shape == (16,) + plan.label_hw
    assert len(batch['image'].addressable_shards) == 8
    mask = np.asarray(batch['mask'])
    np.testing.assert_array_equal(mask, plan.mask.astype(np.float32))
    labels, orig = np.asarray(batch['label']), np.asarray(batch['orig_size'])
    for row in np.nonzero(mask)[0]:
      i = int(plan.indices[row])
      seen.append(i)
      h, w = sizes[i]
      assert tuple(orig[row]) == (h, w)
      assert seg_transforms.align_size(h, w, tuple(scenes.scale), 32) == plan.aligned
      want = seg_transforms.read_label(tf.constant(src.read_numpy([i])[0][1])).numpy()
      np.testing.assert_array_equal(labels[row, :h, :w], want)
      assert np.all(labels[row, h:] == 255) and np.all(labels[row, :, w:] == 255)
  assert sorted(seen) == list(range(40))  # every image exactly once
  assert len(it) == k + 1 == sum(n for _, n in it.groups)
  # Any number of processes: the union of each process's rows is the same pass.
  whole = list(seg_pipeline.eval_dataset(src, scenes, it.plan, 0, 16, threads=1).as_numpy_iterator())
  parts = [list(seg_pipeline.eval_dataset(src, scenes, it.plan, p * 4, p * 4 + 4, threads=1)
                .as_numpy_iterator()) for p in range(4)]
  for step, w in enumerate(whole):
    for key in w:
      np.testing.assert_array_equal(np.concatenate([p[step][key] for p in parts]), w[key])


def test_seg_folder_source_and_errors(tmp_path, mesh):
  root = tmp_path / 'folder'
  rng = np.random.default_rng(0)
  for split, n in (('train', 3), ('validation', 5)):
    (root / 'images' / split).mkdir(parents=True)
    (root / 'annotations' / split).mkdir(parents=True)
    for i in range(n):
      w, h = ADE_SIZES[i % 3]
      (root / 'images' / split / f'{i}.png').write_bytes(testing.encode(testing.make_image(rng, w, h),
                                                                        'PNG'))
      (root / 'annotations' / split / f'{i}.png').write_bytes(png(np.full((h, w), i % 4, np.uint8)))
  (root / 'classes.txt').write_text('a\nb\nc\n')
  d = data_config(dataset='seg_folder', manual_dir=str(root), crop_size=32, scale=(128, 32))
  info = seg_sources.dataset_info(d)
  assert (info.num_classes, info.num_train, info.num_eval, info.class_names) == (3, 3, 5, ('a', 'b', 'c'))
  c = config(d, batch=8)
  c.data.eval_batch_size = 8
  seen = sum(float(np.asarray(b['mask']).sum()) for b in seg_pipeline.create_eval_iterator(c, mesh))
  assert seen == 5
  (root / 'annotations' / 'train' / '1.png').unlink()
  seg_sources._PAIRS.clear()  # pylint: disable=protected-access
  with pytest.raises(FileNotFoundError, match=r'images/train/1\.png has no annotation'):
    seg_sources.open_split(d, 'train')
  (root / 'annotations' / 'train' / '1.png').write_bytes(png(np.zeros((5, 5), np.uint8)))
  seg_sources._PAIRS.clear()  # pylint: disable=protected-access
  with pytest.raises(ValueError, match=r'annotations/train/1\.png has size 5x5'):
    seg_sources.open_split(d, 'train')


@pytest.mark.parametrize('damage', ['header', 'truncated'])
def test_eval_read_errors_name_file_and_split(tmp_path, mesh, damage):
  root = tmp_path / 'folder'
  rng = np.random.default_rng(0)
  for split in ('train', 'validation'):
    (root / 'images' / split).mkdir(parents=True)
    (root / 'annotations' / split).mkdir(parents=True)
    for i in range(3):
      data = testing.make_jpeg(rng, 40, 30)
      if split == 'validation' and i == 1:
        # header: unreadable when the split is opened; truncated: the header reads, decoding fails.
        data = testing.corrupt_jpeg(rng) if damage == 'header' else data[:len(data) // 2]
      (root / 'images' / split / f'im{i}.jpg').write_bytes(data)
      (root / 'annotations' / split / f'im{i}.png').write_bytes(png(np.ones((30, 40), np.uint8)))
  d = data_config(dataset='seg_folder', manual_dir=str(root), num_classes=2, crop_size=32,
                  scale=(128, 32))
  c = config(d, batch=8)
  with pytest.raises(Exception) as e:
    list(seg_pipeline.create_eval_iterator(c, mesh))
  assert 'im1.jpg' in str(e.value) and 'validation' in str(e.value), str(e.value)


def test_label_resize_is_cv2_nearest_and_image_resize_half_pixel_bilinear():
  rng = np.random.default_rng(0)
  lab = rng.integers(0, 150, size=(37, 53)).astype(np.int32)
  for h, w in [(74, 106), (18, 26), (50, 20)]:
    got = seg_transforms.resize_nearest(tf.constant(lab), h, w).numpy()
    ys = np.minimum(np.floor(np.arange(h) * (37 / h)).astype(int), 36)  # cv2 INTER_NEAREST
    xs = np.minimum(np.floor(np.arange(w) * (53 / w)).astype(int), 52)
    np.testing.assert_array_equal(got, lab[ys][:, xs])
  img = rng.integers(0, 256, size=(6, 8, 3)).astype(np.uint8)
  got = seg_transforms.resize_bilinear(tf.constant(img), 12, 16).numpy().astype(np.float64)
  # cv2 INTER_LINEAR: source coordinate (x + 0.5) * in / out - 0.5, clamped at the border.
  def coords(n_out, n_in):
    c = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    i0 = np.floor(c).astype(int)
    return i0, np.minimum(i0 + 1, n_in - 1), c - i0
  y0, y1, fy = coords(12, 6)
  x0, x1, fx = coords(16, 8)
  f = img.astype(np.float64)
  top = f[y0][:, x0] * (1 - fx)[None, :, None] + f[y0][:, x1] * fx[None, :, None]
  bot = f[y1][:, x0] * (1 - fx)[None, :, None] + f[y1][:, x1] * fx[None, :, None]
  want = np.round(top * (1 - fy)[:, None, None] + bot * fy[:, None, None])
  assert np.abs(got - want).max() <= 1


def test_train_read_error_names_the_file(tmp_path, mesh):
  root = tmp_path / 'folder'
  rng = np.random.default_rng(0)
  for split in ('train', 'validation'):
    (root / 'images' / split).mkdir(parents=True)
    (root / 'annotations' / split).mkdir(parents=True)
    for i in range(2):
      data = testing.make_jpeg(rng, 40, 30)
      if split == 'train' and i == 1:
        data = data[:len(data) // 2]
      (root / 'images' / split / f'im{i}.jpg').write_bytes(data)
      (root / 'annotations' / split / f'im{i}.png').write_bytes(png(np.ones((30, 40), np.uint8)))
  d = data_config(dataset='seg_folder', manual_dir=str(root), num_classes=2, crop_size=32,
                  scale=(128, 32))
  with pytest.raises(RuntimeError) as e:
    next(seg_pipeline.create_train_iterator(config(d, batch=8), mesh))
  assert 'im1.jpg' in str(e.value) and "split 'train'" in str(e.value) and 'step 0' in str(e.value)


def test_train_stream_does_not_depend_on_the_process_layout(ade):
  src = seg_sources.open_split(ade, 'train')
  def host(lo, hi):
    ds = seg_pipeline.train_dataset(src, ade, 3, 8, lo, hi, start_step=1, num_steps=2, threads=1)
    return list(ds.as_numpy_iterator())
  whole = host(0, 8)
  parts = [host(p * 2, p * 2 + 2) for p in range(4)]
  assert len(whole) == 2
  for step, w in enumerate(whole):
    for key in w:
      np.testing.assert_array_equal(np.concatenate([p[step][key] for p in parts]), w[key])
