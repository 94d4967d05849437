"""hatnet_jax.tools.predict: batched top-k predictions with the eval transform, CSV/JSON, class names, errors."""
import csv
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hatnet_jax.tools import inference, predict
from tests.tools import common


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('predict')
  model = common.small_model()
  variables = common.save_weights(str(tmp / 'weights'), model)
  from PIL import Image
  os.makedirs(tmp / 'images' / 'sub')
  photo = common.china_jpeg(str(tmp / 'images' / 'china.jpg'))
  arr = common.china_array()
  Image.fromarray(arr[::-1, :, :]).save(tmp / 'images' / 'flipped.png')
  Image.fromarray(arr[:200, :300]).save(tmp / 'images' / 'sub' / 'crop.jpg', quality=90)
  (tmp / 'images' / 'broken.jpg').write_bytes(b'\xff\xd8 this is not a jpeg')
  (tmp / 'images' / 'notes.txt').write_text('not an image, skipped by the directory walk')
  return tmp, model, variables, photo


def _expected_probs(model, variables, path, size):
  """The eval transform written out: EvalCrop (TF ops) + the normalisation, then softmax(model.apply)."""
  import ml_collections
  import tensorflow as tf
  from hatnet_jax.data.classification import augment, transforms
  d = ml_collections.ConfigDict(dict(image_size=size, eval_crop_ratio=0.875, interpolation='bicubic', antialias=True))
  img = transforms.EvalCrop(d)(tf.constant(open(path, 'rb').read())).numpy()
  x = augment.normalize(jnp.asarray(img[None]), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
  return np.asarray(jax.nn.softmax(model.apply(variables, x, train=False), axis=-1))[0]


@pytest.mark.slow  # default suite under 15 min on the 2-core EPYC (16:00 there)
def test_predict_directory_csv_json(setup, capsys):
  tmp, model, variables, photo = setup
  names = tmp / 'names.txt'
  names.write_text('\n'.join(f'class_{chr(97 + i)}' for i in range(common.NUM_CLASSES)) + '\n')
  out_csv, out_json = tmp / 'out' / 'p.csv', tmp / 'out' / 'p.json'
  rc = predict.main([f'--weights={tmp / "weights"}', f'--model_overrides={common.OVERRIDES_JSON}', '--image_size=64',
                     '--top_k=3', '--batch_size=2', f'--class_names={names}', f'--output={out_csv}',
                     f'--output={out_json}', str(tmp / 'images')])
  captured = capsys.readouterr()
  assert rc == 0, captured.err
  assert 'broken.jpg' in captured.err and 'not a decodable image' in captured.err
  assert 'Traceback' not in captured.err
  rows = json.loads(out_json.read_text())
  files = [os.path.basename(r['file']) for r in rows]
  assert files == ['china.jpg', 'flipped.png', 'crop.jpg']  # sorted walk, 3 images in 2 batches
  for r in rows:
    preds = r['predictions']
    assert len(preds) == 3
    probs = _expected_probs(model, variables, r['file'], 64)
    order = np.argsort(-probs, kind='stable')[:3]
    assert [p['index'] for p in preds] == list(order)
    np.testing.assert_allclose([p['prob'] for p in preds], probs[order], atol=1e-5)
    assert [p['name'] for p in preds] == [f'class_{chr(97 + i)}' for i in order]
    assert os.path.basename(r['file']) in captured.out and preds[0]['name'] in captured.out
  with open(out_csv) as f:
    table = list(csv.reader(f))
  assert table[0][:4] == ['file', 'top1_class', 'top1_index', 'top1_prob'] and len(table) == 4
  assert float(table[1][3]) == pytest.approx(rows[0]['predictions'][0]['prob'], abs=1e-6)


@pytest.mark.slow
def test_training_checkpoint_and_index_names(setup, tmp_path, capsys):
  """A training workdir (DIR/checkpoints/STEP/state with more than params) works as --weights."""
  _, model, variables, photo = setup
  from hatnet_jax.training import checkpoint
  ckpt = checkpoint.CheckpointManager(str(tmp_path / 'run' / 'checkpoints'), max_to_keep=2, keep_best=False,
                                      async_save=False)
  state = {'params': variables['params'], 'step': jnp.int32(7), 'opt_state': {'mu': jnp.ones(3)}}
  ckpt.save(7, state)
  ckpt.close()
  assert inference.resolve_weights(str(tmp_path / 'run')) == (str(tmp_path / 'run' / 'checkpoints' / '7' / 'state'),
                                                              str(tmp_path / 'run'))
  rc = predict.main([f'--weights={tmp_path / "run"}', f'--model_overrides={common.OVERRIDES_JSON}',
                     '--image_size=64', '--top_k=2', photo])
  out = capsys.readouterr()
  assert rc == 0, out.err
  probs = _expected_probs(model, variables, photo, 64)
  assert f'{int(np.argmax(probs))} {100 * probs.max():.1f}%' in out.out  # no names known: indices


@pytest.mark.slow
def test_errors_are_actionable(setup, tmp_path, capsys):
  tmp, _, _, photo = setup
  # A directory without a checkpoint: says which paths would work, exit 2, no traceback.
  assert predict.main([f'--weights={tmp_path}', photo]) == 2
  err = capsys.readouterr().err
  assert 'checkpoints/STEP/state' in err and 'hatnet_jax.tools.convert' in err and 'Traceback' not in err
  # The wrong model for the weights: names the mismatching parameter and the flags to set.
  assert predict.main([f'--weights={tmp / "weights"}', '--image_size=64', photo]) == 2
  err = capsys.readouterr().err
  assert 'model_overrides' in err and 'Traceback' not in err
  # Nothing readable: exit 1, every file named.
  bad = tmp_path / 'bad.png'
  bad.write_bytes(b'nope')
  assert predict.main([f'--weights={tmp / "weights"}', f'--model_overrides={common.OVERRIDES_JSON}',
                       str(bad), str(tmp_path / 'missing.jpg')]) == 1
  err = capsys.readouterr().err
  assert 'bad.png' in err and 'missing.jpg' in err and 'Traceback' not in err


def test_imagenet_class_names():
  names = inference.imagenet_class_names()
  assert len(names) == 1000
  assert names[0] == 'tench' and names[1] == 'goldfish' and names[-1] == 'toilet tissue'
  s = inference.Settings(num_classes=1000)
  got, source = inference.class_names(s)
  assert got == names and 'ImageNet' in source
  got, source = inference.class_names(inference.Settings(num_classes=4))
  assert got == ['0', '1', '2', '3'] and 'indices' in source


@pytest.mark.slow
def test_digits_run_class_names():
  s = inference.Settings(num_classes=10, dataset='digits')
  names, source = inference.class_names(s)
  assert len(names) == 10 and 'digits' in source
