"""End-to-end input pipeline on small data made here: the digits builder, tfds.testing.mock_data, a fake
ImageNet manual dir with real JPEGs (prepared by TFDS), an ImageFolder tree. Runs on the 8 fake CPU
devices of tests/conftest.py."""
import contextlib
import logging
import math
import os

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

tf = pytest.importorskip('tensorflow')
tfds = pytest.importorskip('tensorflow_datasets')

from configs import default  # pylint: disable=g-import-not-at-top
from hatnet_jax.data import classification as data
from hatnet_jax.data import stream, testing
from hatnet_jax.data.classification import pipeline, sources
from hatnet_jax.data.demos import digits

SIZE = 16  # small images keep the tests fast; one compiled augmentation serves all tests
BATCH = 16
SYNSETS = ['n01440764', 'n01443537', 'n01484850']


def make_config(**data_overrides):
  c = default.get_config()
  c.batch_size = BATCH
  c.data.image_size = SIZE
  c.data.prefetch = 1
  c.data.threads = 2
  c.data.device_resize = 48  # the test images (<= 40 pixels) travel unresized; small canvases, fast
  for k, v in data_overrides.items():
    setattr(c.data, k, v)
  return c


@pytest.fixture(scope='module')
def mesh():
  assert jax.device_count() == 8, 'tests/conftest.py should give 8 fake CPU devices'
  return Mesh(np.array(jax.devices()), ('data',))


@pytest.fixture(scope='module')
def digits_config(tmp_path_factory):
  c = make_config(dataset='digits', data_dir=str(tmp_path_factory.mktemp('tfds')))
  data.dataset_info(c.data)  # prepares it once
  return c


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """validation: 37 classes x 1 image (label = identity); train: 4 classes x 6 images + 2 corrupt;
  broken: one good and one corrupt image."""
  root = str(tmp_path_factory.mktemp('folder'))
  splits = {'validation': {f'c{i:02d}': 1 for i in range(37)},
            'train': {f'c{i:02d}': 6 for i in range(4)},
            'broken': {'c00': 1}}
  testing.make_image_folder(root, splits, size=(30, 22))
  rng = np.random.default_rng(1)
  for path in ('train/c01/bad_0.jpg', 'train/c02/bad_1.jpg', 'broken/c00/bad.jpg'):
    with open(os.path.join(root, path), 'wb') as f:
      f.write(testing.corrupt_jpeg(rng))
  return root


@pytest.fixture(scope='module')
def imagenet_config(tmp_path_factory):
  base = tmp_path_factory.mktemp('imagenet')
  manual = testing.make_fake_imagenet(str(base / 'manual'), SYNSETS, images_per_class=3, num_val=7,
                                      size=(40, 30))
  from hatnet_jax.tools import prepare_data as prepare  # pylint: disable=g-import-not-at-top
  assert prepare.main(['--dataset=imagenet2012', f'--manual_dir={manual}',
                       f'--data_dir={base / "tfds"}']) == 0
  return make_config(dataset='imagenet2012', manual_dir=manual, data_dir=str(base / 'tfds'))


def take(it, n):
  return [jax.device_get(next(it)) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ------------------------------------------------------------------------------------------------


def test_digits_builder_fixed_split(digits_config):
  info = data.dataset_info(digits_config.data)
  images, labels, is_test = digits.load_arrays()
  assert images.shape == (1797, 32, 32) and images.dtype == np.uint8
  assert (info.name, info.num_classes, info.eval_split) == ('hatnet_digits', 10, 'test')
  assert (info.num_train, info.num_eval) == (int((~is_test).sum()), int(is_test.sum())) == (1442, 355)
  src = sources.open_split(digits_config.data, 'test')
  data_, lab = src.lookup(tf.range(len(src), dtype=tf.int64))
  decoded = np.stack([tf.io.decode_png(x).numpy()[..., 0] for x in data_.numpy()])
  # The stored test split is exactly the fixed selection (TFDS stores it in its own order).
  want = {(int(l), im.tobytes()) for im, l in zip(images[is_test], labels[is_test])}
  assert {(int(l), im.tobytes()) for im, l in zip(decoded, lab.numpy())} == want


def test_digits_train_and_eval_batches(digits_config, mesh):
  c = digits_config
  it = data.create_train_iterator(c, mesh)
  b = next(it)
  assert b['image'].shape == (BATCH, SIZE, SIZE, 3) and b['image'].dtype == np.float32
  assert b['label'].shape == (BATCH,) and b['label'].dtype == np.int32
  assert b['image'].sharding.spec == P('data') and b['label'].sharding.spec == P('data')
  assert len(b['image'].addressable_shards) == 8
  x = np.asarray(b['image'])
  assert np.all(np.isfinite(x)) and np.abs(x).max() < 8  # normalised (+ N(0,1) erased boxes)
  assert set(np.asarray(b['label']).tolist()) <= set(range(10))
  assert it.num_skipped == 0 and it.step == 1 and it.get_state() == {'step': 1}
  assert not it.replacing  # clean data: the plain pipeline

  batches = list(data.create_eval_iterator(c, mesh))
  assert len(batches) == math.ceil(355 / BATCH)
  mask = np.concatenate([np.asarray(e['mask']) for e in batches])
  assert mask.sum() == 355 and mask.dtype == np.float32 and np.all(mask[:355] == 1)
  x = np.concatenate([np.asarray(e['image']) for e in batches])
  lo = (0 - np.array(c.data.mean)) / np.array(c.data.std)
  hi = (1 - np.array(c.data.mean)) / np.array(c.data.std)
  assert np.all(x >= lo - 1e-5) and np.all(x <= hi + 1e-5)


def test_tfds_dataset_by_name_with_mock_data(mesh):
  c = make_config(dataset='cifar10', eval_split='test', randaugment='', erase_prob=0.0)
  with tfds.testing.mock_data(num_examples=21):
    info = data.dataset_info(c.data)
    assert (info.num_classes, info.num_train, info.num_eval) == (10, 21, 21)
    assert (info.image_key, info.label_key) == ('image', 'label')
    b = next(data.create_train_iterator(c, mesh))
    assert b['image'].shape == (BATCH, SIZE, SIZE, 3)
    evals = list(data.create_eval_iterator(c, mesh))
  assert len(evals) == 2 and sum(float(np.sum(e['mask'])) for e in evals) == 21


def test_fake_imagenet_prepared_from_manual_dir(imagenet_config, mesh):
  c = imagenet_config
  info = data.dataset_info(c.data)
  assert (info.name, info.num_classes, info.num_train, info.num_eval) == ('imagenet2012', 1000, 9, 7)
  names = tfds.builder('imagenet2012', data_dir=c.data.data_dir).info.features['label']
  # Validation labels: TFDS's bundled list, in sorted file-name order.
  val_labels_file = os.path.join(os.path.dirname(tfds.__file__), 'datasets', 'imagenet2012',
                                 'validation_labels.txt')
  with open(val_labels_file) as f:
    want = sorted(names.str2int(l.strip()) for l in f.read().split()[:7])
  evals = list(data.create_eval_iterator(c, mesh))
  got = np.concatenate([np.asarray(e['label'])[np.asarray(e['mask']) > 0] for e in evals])
  assert sorted(got.tolist()) == want
  b = next(data.create_train_iterator(c, mesh))  # JPEG source: fused decode-and-crop path
  assert set(np.asarray(b['label']).tolist()) <= {names.str2int(s) for s in SYNSETS}


def test_device_resize_gives_the_host_resize_batches(imagenet_config, mesh):
  c = make_config(**{k: imagenet_config.data[k] for k in ('dataset', 'manual_dir', 'data_dir')},
                  randaugment='', erase_prob=0.0)
  src = sources.open_split(c.data, 'train')
  assert pipeline.train_canvas(c.data) == 48  # image sizes vary: the configured canvas
  assert pipeline.train_canvas(c.data, (32, 32, 1)) == 32 == pipeline.train_canvas(c.data, (8, 8, 3)) + 16
  host = next(iter(pipeline.train_dataset(src, c.data, 0, BATCH, 0, BATCH, threads=1)))
  assert host['image'].shape == (BATCH, 48, 48, 3) and host['extent'].shape == (BATCH, 2)
  for img, (h, w) in zip(host['image'].numpy(), host['extent'].numpy()):
    assert 0 < h <= 30 and 0 < w <= 40 and not img[h:].any() and not img[:, w:].any()
  on_device = take(data.create_train_iterator(c, mesh), 2)
  c.data.device_resize = 0
  on_host = take(data.create_train_iterator(c, mesh), 2)
  for a, b in zip(on_device, on_host):
    np.testing.assert_array_equal(a['label'], b['label'])
    # One level of rounding (1 / 255 / std) at most, on few pixels.
    diff = np.abs(a['image'] - b['image'])
    assert diff.max() <= 1 / 255 / min(c.data.std) + 1e-5 and np.mean(diff > 1e-5) < 0.01


def test_imagenet_missing_files_error_names_files_and_command(tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  (manual / 'ILSVRC2012_img_val.tar').write_bytes(b'')
  c = make_config(dataset='imagenet2012', manual_dir=str(manual), data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(FileNotFoundError) as e:
    data.dataset_info(c.data)
  msg = str(e.value)
  assert f'{manual / "ILSVRC2012_img_train.tar"}  [MISSING]' in msg
  assert f'{manual / "ILSVRC2012_img_val.tar"}  [found]' in msg
  assert (f'python -m hatnet_jax.tools.prepare_data --dataset=imagenet2012 --manual_dir={manual} '
          f'--data_dir={tmp_path / "tfds"}') in msg


def test_image_folder_exact_eval_on_odd_split_over_8_devices(folder, mesh):
  c = make_config(dataset='image_folder', manual_dir=folder)
  info = data.dataset_info(c.data)
  assert (info.num_classes, info.num_eval, info.eval_split) == (37, 37, 'validation')
  assert info.class_names[:3] == ('c00', 'c01', 'c02')
  batches = list(data.create_eval_iterator(c, mesh))  # 37 examples, global batch 16, 8 devices
  assert len(batches) == 3
  labels = np.concatenate([np.asarray(b['label']) for b in batches])
  mask = np.concatenate([np.asarray(b['mask']) for b in batches])
  assert mask.sum() == 37 and (mask == 0).sum() == 3 * BATCH - 37
  assert sorted(labels[mask > 0].tolist()) == list(range(37))  # every example exactly once
  # Any number of processes: the union of each process's rows is the same exact pass.
  src = sources.open_split(c.data, 'validation')
  def host_pass(lo, hi):
    return list(pipeline.eval_dataset(src, c.data, BATCH, lo, hi, threads=1).as_numpy_iterator())
  single = host_pass(0, BATCH)
  for procs in (2, 4):
    rows = BATCH // procs
    parts = [host_pass(p * rows, (p + 1) * rows) for p in range(procs)]
    for step, whole in enumerate(single):
      for k in ('image', 'label', 'mask'):
        np.testing.assert_array_equal(np.concatenate([part[step][k] for part in parts]), whole[k])
  # Re-callable: a second pass gives the same data.
  again = list(data.create_eval_iterator(c, mesh))
  np.testing.assert_array_equal(np.asarray(again[1]['image']), np.asarray(batches[1]['image']))


def test_same_seed_same_batches_and_exact_resume(digits_config, mesh):
  c = digits_config
  first = take(data.create_train_iterator(c, mesh), 4)
  assert_batches_equal(first, take(data.create_train_iterator(c, mesh), 4))
  assert_batches_equal(first[2:], take(data.create_train_iterator(c, mesh, start_step=2), 2))
  other = c.copy_and_resolve_references()
  other.seed = 1
  assert not np.array_equal(first[0]['image'], take(data.create_train_iterator(other, mesh), 1)[0]['image'])
  # The global batch does not depend on the device count (resume onto another machine size).
  one_device = Mesh(np.array(jax.devices()[:1]), ('data',))
  on_one = take(data.create_train_iterator(c, one_device, start_step=2), 1)[0]
  np.testing.assert_array_equal(on_one['label'], first[2]['label'])
  np.testing.assert_allclose(on_one['image'], first[2]['image'], rtol=1e-6, atol=1e-5)


def test_host_batches_independent_of_process_count(digits_config):
  c = digits_config
  src = sources.open_split(c.data, 'train')
  def host(lo, hi):
    ds = pipeline.train_dataset(src, c.data, 0, BATCH, lo, hi, start_step=3, num_steps=2, threads=1)
    return list(ds.as_numpy_iterator())
  whole = host(0, BATCH)
  halves = [host(0, BATCH // 2), host(BATCH // 2, BATCH)]
  for step in range(2):
    for k in ('image', 'label'):
      np.testing.assert_array_equal(np.concatenate([h[step][k] for h in halves]), whole[step][k])
  cached = pipeline.train_dataset(sources.open_split(c.data, 'train', cache=True), c.data, 0, BATCH,
                                  0, BATCH, start_step=3, num_steps=2, threads=1)
  for a, b in zip(cached.as_numpy_iterator(), whole):
    np.testing.assert_array_equal(a['image'], b['image'])


def test_epoch_permutations_and_repeated_augmentation():
  n = 50
  first = stream.stream_indices(tf.range(n, dtype=tf.int64), n, seed=0).numpy()
  second = stream.stream_indices(tf.range(n, 2 * n, dtype=tf.int64), n, seed=0).numpy()
  assert sorted(first.tolist()) == list(range(n)) and sorted(second.tolist()) == list(range(n))
  assert not np.array_equal(first, second)  # a new permutation every epoch
  assert not np.array_equal(first, stream.stream_indices(tf.range(n, dtype=tf.int64), n, seed=1))
  rep = stream.stream_indices(tf.range(n, dtype=tf.int64), n, seed=0, repeats=3).numpy()
  assert np.all(rep[0::3][:16] == rep[1::3][:16]) and np.all(rep[0::3][:16] == rep[2::3][:16])
  assert len(set(rep.tolist())) == math.ceil(n / 3)


@contextlib.contextmanager
def caplog_at_warning():
  """The log records (WARNING and up) of the pipeline's logger while the block runs."""
  records = []
  handler = logging.Handler(logging.WARNING)
  handler.emit = records.append
  logging.getLogger().addHandler(handler)
  try:
    yield records
  finally:
    logging.getLogger().removeHandler(handler)


def test_corrupt_training_images_are_replaced_and_counted(folder, mesh):
  c = make_config(dataset='image_folder', manual_dir=folder)
  src = sources.open_split(c.data, 'train')
  corrupt = {i for i, p in enumerate(src.paths) if os.path.basename(p).startswith('bad')}
  assert len(corrupt) == 2 and len(src) == 26
  steps = 4  # 64 positions: every example at least twice
  host = list(pipeline.train_dataset(src, c.data, 0, BATCH, 0, BATCH, num_steps=steps,
                                     threads=1).as_numpy_iterator())
  skipped = np.concatenate([h['skipped'] for h in host])
  original = stream.stream_indices(tf.range(steps * BATCH, dtype=tf.int64), len(src), 0).numpy()
  hit = np.array([i in corrupt for i in original])
  assert hit.sum() >= 4
  assert np.all((skipped > 0) == hit)  # replaced exactly where the original image is corrupt
  it = data.create_train_iterator(c, mesh)
  with caplog_at_warning() as records:
    take(it, steps)
  assert it.num_skipped == int(skipped.sum()) >= hit.sum()
  assert it.replacing  # switched to the replacing pipeline at the first batch with a corrupt image
  strict = make_config(dataset='image_folder', manual_dir=folder, skip_corrupt=False)
  with pytest.raises(tf.errors.InvalidArgumentError):
    take(data.create_train_iterator(strict, mesh), steps)
  named = ' '.join(r.getMessage() for r in records if 'undecodable training image' in r.getMessage())
  assert 'bad_0.jpg' in named or 'bad_1.jpg' in named  # replaced images are named in the log
  # Evaluation never skips silently, and names the file and the split.
  bad = make_config(dataset='image_folder', manual_dir=folder, eval_split='broken')
  with pytest.raises(stream.CorruptImageError,
                     match=r"(?s)eval split 'broken' could not be decoded.*evaluation never skips.*broken/c00/bad.jpg"):
    list(data.create_eval_iterator(bad, mesh))


def test_an_empty_class_directory_is_an_error_unless_allowed(tmp_path, mesh):
  root = testing.make_image_folder(str(tmp_path / 'f'), {'train': {'a': 2, 'b': 2}, 'validation': {'a': 1}})
  os.makedirs(os.path.join(root, 'train', 'empty_class'))
  c = make_config(dataset='image_folder', manual_dir=root)
  with pytest.raises(ValueError, match=r'class directory empty_class holds no images.*allow_empty_classes=True'):
    sources.open_split(c.data, 'train')
  c.data.allow_empty_classes = True
  assert len(sources.open_split(c.data, 'train')) == 4


def test_batch_size_must_divide_device_count(digits_config, mesh):
  c = digits_config.copy_and_resolve_references()
  c.batch_size = 12
  with pytest.raises(ValueError, match='multiple of the device count'):
    data.create_train_iterator(c, mesh)
  with pytest.raises(ValueError, match='multiple of the device count'):
    data.create_eval_iterator(c, mesh)


# The data settings of configs/digits.py (the CPU demo): 16x16, no flips (digits are not
# mirror-symmetric), mild crops, no RandAugment/erasing/mixing, eval without border crop, in memory.
DEMO_DATA = dict(dataset='digits', image_size=16, crop_scale=(0.6, 1.0), hflip_prob=0.0,
                 randaugment='', erase_prob=0.0, eval_crop_ratio=1.0, cache=True)
DEMO_MIXUP = dict(mixup_alpha=0.0, cutmix_alpha=0.0, mixup_prob=0.0, label_smoothing=0.1)


@pytest.mark.slow
def test_digits_are_learnable_to_95_percent(digits_config):
  """A small convnet trained from this pipeline (demo settings) reaches >= 95% digits test accuracy."""
  import optax  # pylint: disable=g-import-not-at-top
  c = make_config(data_dir=digits_config.data.data_dir, **DEMO_DATA)
  c.mixup.update(DEMO_MIXUP)
  c.batch_size = 64
  mesh1 = Mesh(np.array(jax.devices()[:1]), ('data',))
  info = data.dataset_info(c.data)
  rng = jax.random.key(0)
  ks = jax.random.split(rng, 3)
  params = {'c1': jax.random.normal(ks[0], (3, 3, 3, 16)) * 0.2,
            'c2': jax.random.normal(ks[1], (3, 3, 16, 32)) * 0.08,
            'd': jax.random.normal(ks[2], (4 * 4 * 32, 10)) * 0.02, 'b': jax.numpy.zeros(10)}
  def forward(p, x):
    x = jax.nn.relu(jax.lax.conv_general_dilated(x, p['c1'], (2, 2), 'SAME',
                                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
    x = jax.nn.relu(jax.lax.conv_general_dilated(x, p['c2'], (2, 2), 'SAME',
                                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
    return x.reshape(x.shape[0], -1) @ p['d'] + p['b']
  tx = optax.adam(3e-3)
  opt = tx.init(params)
  @jax.jit
  def step(p, o, batch, key):
    images, targets = data.mixup.mix_batch(key, batch['image'], batch['label'], num_classes=10, **c.mixup)
    loss_fn = lambda p: optax.softmax_cross_entropy(forward(p, images), targets).mean()
    loss, g = jax.value_and_grad(loss_fn)(p)
    upd, o = tx.update(g, o, p)
    return optax.apply_updates(p, upd), o, loss
  it = data.create_train_iterator(c, mesh1)
  for s in range(300):  # ~13 epochs of 1,442 images
    params, opt, loss = step(params, opt, next(it), jax.random.fold_in(rng, s))
  correct = total = 0
  for b in data.create_eval_iterator(c, mesh1):
    pred = np.argmax(np.asarray(forward(params, b['image'])), -1)
    m = np.asarray(b['mask']) > 0
    correct += int((pred[m] == np.asarray(b['label'])[m]).sum())
    total += int(m.sum())
  assert total == info.num_eval == 355
  print(f"digits test accuracy after 300 steps: {correct / total:.4f}")
  assert correct / total >= 0.95, correct / total
