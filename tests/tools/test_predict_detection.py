"""hatnet_jax.tools.predict on a detection run: a RetinaNet workdir trained here through main.py
(configs/retinanet_digits.py:tiny, 8 steps, score_thr 0 so that it outputs detections), images through the
evaluation's resize, PNG + JSON per image equal to Detection.predict on the eval transform's batch and to the
run's own evaluation; the size rule by hand; errors."""
import json
import os
import subprocess

import numpy as np
import pytest

from hatnet_jax.tools import predict
from tests.tools import common
from tests.training import test_train_e2e as e2e

DET_TINY = os.path.join(e2e.REPO, 'configs', 'retinanet_digits.py') + ':tiny'


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A trained tiny detection workdir (1 device) and the digit_boxes/small data dir it prepared."""
  root = tmp_path_factory.mktemp('predict_det')
  shared = {'data_dir': str(root / 'tfds'), 'cache': str(root / 'jax_cache')}
  workdir = str(root / 'run')
  cmd = e2e._cmd(shared, workdir)[:2] + [f'--config={DET_TINY}', f'--workdir={workdir}',
                                        f'--config.data.data_dir={shared["data_dir"]}',
                                        '--config.detection.score_thr=0.0']
  out = subprocess.run(cmd, env=e2e._env(shared, 1), cwd=e2e.REPO, capture_output=True, text=True,
                       timeout=e2e.RUN_TIMEOUT)
  assert out.returncode == 0, out.stderr[-5000:]
  return {'workdir': workdir, 'data_dir': shared['data_dir'], 'root': root}


def _config(run):
  from configs import retinanet_digits  # pylint: disable=g-import-not-at-top
  config = retinanet_digits.get_config('tiny')
  config.data.data_dir = run['data_dir']
  config.detection.score_thr = 0.0
  return config


@pytest.fixture(scope='module')
def images(run):
  """Test scenes as stored (PNG; the first 96 x 96 and the first smaller one, with their image ids), and two
  resized copies that the keep-ratio resize scales: 100 x 150 (down to 64 x 96) and 40 x 50 (up to 77 x 96)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from hatnet_jax.data.detection import sources  # pylint: disable=g-import-not-at-top
  src = sources.open_split(_config(run).data, 'test')
  heights, widths = src.meta['heights'], src.meta['widths']
  picks = [int(np.flatnonzero((heights == 96) & (widths == 96))[0]), int(np.flatnonzero(heights < 96)[0])]
  folder = run['root'] / 'images'
  folder.mkdir()
  paths, ids = [], {}
  for i in picks:
    rec = src.read([i], keys=['image', 'image_id'])[0]
    path = str(folder / f'scene_{int(rec["image_id"])}.png')
    open(path, 'wb').write(rec['image'])
    paths.append(path)
    ids[path] = int(rec['image_id'])
  scene = Image.open(paths[0]).convert('RGB')
  for name, (w, h) in (('wide.jpg', (150, 100)), ('small.png', (50, 40))):
    scene.resize((w, h), Image.BILINEAR).save(folder / name)
    paths.append(str(folder / name))
  return paths, ids


def _reference(run, path):
  """Detection.predict on the batch the evaluation builds for this file: DetTransform(train=False) on a record
  holding its bytes, in a canvas of its size padded to 32, then the eval pipeline's normalisation."""
  import jax  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from hatnet_jax import tasks  # pylint: disable=g-import-not-at-top
  from hatnet_jax.data import stream  # pylint: disable=g-import-not-at-top
  from hatnet_jax.data.detection import transforms  # pylint: disable=g-import-not-at-top
  from hatnet_jax.tools import inference  # pylint: disable=g-import-not-at-top
  config = _config(run)
  d = config.data
  w, h = Image.open(path).size
  feature = lambda **kv: tf.train.Feature(**kv)
  example = tf.train.Example(features=tf.train.Features(feature={
      'image': feature(bytes_list=tf.train.BytesList(value=[open(path, 'rb').read()])),
      'image_id': feature(int64_list=tf.train.Int64List(value=[1])),
      'height': feature(int64_list=tf.train.Int64List(value=[h])),
      'width': feature(int64_list=tf.train.Int64List(value=[w]))}))
  canvas = transforms.padded_size(h, w, tuple(d.scale), d.size_divisor)
  row = transforms.DetTransform(d, train=False)(example.SerializeToString(), tf.zeros([2], tf.int64),
                                                 tf.constant(canvas, tf.int32))
  row = {k: np.asarray(v)[None] for k, v in row.items()}
  task = tasks.create(config)
  model = task.create_model(10)
  variables = inference.load_variables(model, inference.resolve_weights(run['workdir'])[0])
  batch = {'image': stream.normalize_pad(row['image'], row['image_size'], tuple(d.mean), tuple(d.std)),
           'image_size': row['image_size'], 'scale': row['scale']}
  out = jax.jit(lambda v, b: task.predict(model, v, b))(variables, batch)
  return {k: np.asarray(v)[0] for k, v in out.items()}, (h, w)


@pytest.fixture(scope='module')
def predicted(run, images):
  """predict.main with --score_threshold=0 (every detection the model keeps) on the four images."""
  out_dir = run['root'] / 'out'
  rc = predict.main([f'--weights={run["workdir"]}', '--score_threshold=0', f'--output_dir={out_dir}',
                     f'--output={out_dir / "all.json"}', f'--output={out_dir / "all.csv"}', *images[0]])
  assert rc == 0
  return out_dir


@pytest.mark.slow  # the module's training run (~2 min on 2 cores)
def test_png_and_json_per_image_equal_detection_predict(run, images, predicted):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from hatnet_jax.visualization import boxes as box_pictures  # pylint: disable=g-import-not-at-top
  for path in images[0]:
    stem = os.path.splitext(os.path.basename(path))[0]
    record = json.load(open(predicted / f'{stem}.json'))
    expected, (h, w) = _reference(run, path)
    original = np.asarray(Image.open(path).convert('RGB'))
    picture = np.asarray(Image.open(predicted / f'{stem}.png'))
    assert picture.shape == original.shape == (h, w, 3)  # drawn on the original image, at its size
    assert (record['file'], record['height'], record['width']) == (path, h, w)
    dets = record['detections']
    n = int(expected['valid'].sum())
    assert n == len(dets) > 0  # score threshold 0: every detection the model keeps
    boxes = np.array([t['box'] for t in dets], np.float32)
    np.testing.assert_allclose(boxes, expected['boxes'][:n], rtol=0, atol=1e-3)
    np.testing.assert_allclose([t['score'] for t in dets], expected['scores'][:n], rtol=0, atol=1e-6)
    assert [t['class_index'] for t in dets] == expected['labels'][:n].tolist()
    assert [t['class_name'] for t in dets] == [f'digit {k}' for k in expected['labels'][:n]]
    assert [t['category_id'] for t in dets] == [k + 1 for k in expected['labels'][:n]]  # the dataset's ids
    assert np.all(boxes >= 0) and np.all(boxes[:, [0, 2]] <= w) and np.all(boxes[:, [1, 3]] <= h)
    assert np.all(boxes[:, 2] >= boxes[:, 0]) and np.all(boxes[:, 3] >= boxes[:, 1])
    drawn = box_pictures.draw_boxes(original, boxes, [t['class_index'] for t in dets],
                                    [t['score'] for t in dets], [f'digit {k}' for k in range(10)])
    np.testing.assert_array_equal(picture, drawn)
    assert not np.array_equal(picture, original)
  every = json.load(open(predicted / 'all.json'))
  assert [r['file'] for r in every] == images[0]
  rows = open(predicted / 'all.csv').read().splitlines()
  assert rows[0].startswith('file,x1,y1,x2,y2,score,class_index,class_name,category_id')
  assert len(rows) == 1 + sum(len(r['detections']) for r in every)


@pytest.mark.slow
def test_scenes_match_the_runs_own_evaluation(run, images, predicted):
  """The stored 96 x 96 scene fills the eval canvas (96, 96) exactly: its top detections are those the run's
  last evaluation wrote to eval/detections_8.json (COCO results: xywh, category ids)."""
  path = images[0][0]
  image_id = images[1][path]
  evaluated = [r for r in json.load(open(os.path.join(run['workdir'], 'eval', 'detections_8.json')))
               if r['image_id'] == image_id]
  ours = json.load(open(predicted / (os.path.splitext(os.path.basename(path))[0] + '.json')))['detections']
  assert len(evaluated) == len(ours)
  for det in ours[:10]:
    x1, y1, x2, y2 = det['box']
    assert any(r['category_id'] == det['category_id'] and abs(r['score'] - det['score']) < 1e-5
               and np.allclose(r['bbox'], [x1, y1, x2 - x1, y2 - y1], atol=1e-2) for r in evaluated), det


@pytest.mark.slow
def test_default_threshold_and_errors(run, images, tmp_path, capsys):
  paths = images[0]
  (tmp_path / 'broken.jpg').write_bytes(b'\xff\xd8 not a jpeg')
  rc = predict.main([f'--weights={run["workdir"]}', f'--output_dir={tmp_path}', paths[0], str(tmp_path / 'broken.jpg')])
  out = capsys.readouterr()
  assert rc == 0, out.err
  assert 'skipped' in out.err and 'broken.jpg' in out.err and 'Traceback' not in out.err
  record = json.load(open(tmp_path / (os.path.splitext(os.path.basename(paths[0]))[0] + '.json')))
  assert record['score_threshold'] == 0.3 and all(t['score'] >= 0.3 for t in record['detections'])
  # Flags that do not apply to a detection model, and a classification checkpoint under a detection config.
  model = common.small_model()
  common.save_weights(str(tmp_path / 'cls'), model)
  for flags, message in (([f'--weights={run["workdir"]}', '--image_size=64'], '--image_size is for classification'),
                         ([f'--weights={tmp_path / "cls"}', f'--config={DET_TINY}'], 'is no RetinaNet checkpoint')):
    assert predict.main(flags + [f'--output_dir={tmp_path}', paths[0]]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count('\n') == 1 and 'Traceback' not in err, err
  with pytest.raises(SystemExit):
    predict.main([f'--weights={run["workdir"]}', '--score_threshold=1.5', paths[0]])


def test_preprocessor_sizes_by_hand(tmp_path):
  """mmdet's keep-ratio rule to fit (96, 96): 100 x 150 -> s = min(96 / 150, 96 / 100) = 0.64 -> 64 x 96 (pad
  64 x 96); 40 x 50 -> s = 1.92 -> int(40 * 1.92 + 0.5) = 77 x 96 (pad 96 x 96); scale = new / old per side."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pre = predict.DetPreprocessor(ml_collections.ConfigDict(dict(scale=(96, 96), size_divisor=32)))
  rng = np.random.default_rng(0)
  for (h, w), size, padded in (((100, 150), (64, 96), (64, 96)), ((40, 50), (77, 96), (96, 96))):
    Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(tmp_path / 'x.png')
    x = pre.load(str(tmp_path / 'x.png'))
    assert x['original'].shape == (h, w, 3) and x['image'].shape == padded + (3,)
    assert x['image_size'].tolist() == list(size)
    np.testing.assert_array_equal(x['scale'], np.float32([size[0] / h, size[1] / w]))
    assert not x['image'][size[0]:].any() and not x['image'][:, size[1]:].any()  # zero padding


def test_record_threshold_and_output_names():
  out = {'boxes': np.float32([[1, 2, 3, 4], [5, 6, 7, 8], [0, 0, 0, 0]]), 'scores': np.float32([0.9, 0.2, 0.0]),
         'labels': np.int32([1, 0, 0]), 'valid': np.array([True, True, False])}
  record = predict.detection_record('a.png', out, 0.3, ['cat', 'dog'], [17, 18], (10, 20))
  assert record == {'file': 'a.png', 'height': 10, 'width': 20, 'score_threshold': 0.3, 'detections': [
      {'box': [1.0, 2.0, 3.0, 4.0], 'score': pytest.approx(0.9), 'class_index': 1, 'class_name': 'dog',
       'category_id': 18}]}
  assert len(predict.detection_record('a.png', out, 0.0, ['cat', 'dog'], None, (10, 20))['detections']) == 2
  used = {os.path.abspath('out/b')}  # an input file out/b.png: its outputs must not be out/b.png
  names = [predict._output_stem('out', p, used) for p in ('x/a.jpg', 'y/a.png', 'out/b.png')]
  assert names == [os.path.join('out', 'a'), os.path.join('out', 'a_2'), os.path.join('out', 'b_2')]


def test_detection_config_from_recorded_hparams(tmp_path):
  """The flat config of run.json back to a ConfigDict: tuples from their text, '' (None) back to None."""
  from hatnet_jax.training import monitor, run_record  # pylint: disable=g-import-not-at-top
  from configs import retinanet_digits  # pylint: disable=g-import-not-at-top
  config = retinanet_digits.get_config('tiny')
  record = run_record.RunRecord(str(tmp_path))
  record.start(num_steps=8, steps_per_epoch=6, task='detection', hparams=monitor.hparams(config))
  args = type('Args', (), {'config': None})()
  back = predict.detection_config(args, str(tmp_path))
  assert back.data.scale == (96, 96) and back.model.dims == (8, 16, 24, 32) and back.data.data_dir is None
  assert back.detection.to_dict() == config.detection.to_dict() and back.model.name == config.model.name
  assert predict.detection_config(args, str(tmp_path / 'elsewhere')) is None  # no run.json: not a detection run


def test_a_mask_rcnn_run_is_refused_with_the_way_to_its_predictions(tmp_path):
  from configs import maskrcnn_digits  # pylint: disable=g-import-not-at-top
  from hatnet_jax.tools import inference  # pylint: disable=g-import-not-at-top
  config_file = tmp_path / 'c.py'
  config_file.write_text('from configs import maskrcnn_digits\n\n\ndef get_config():\n'
                         "  return maskrcnn_digits.get_config('tiny')\n")
  assert maskrcnn_digits.get_config('tiny').task == 'instance_segmentation'
  args = type('Args', (), {'config': str(config_file)})()
  with pytest.raises(inference.UserError, match='config.mode=eval'):
    predict.detection_config(args, None)
