"""Classifies image files with HAT-Net weights, or draws a detection model's boxes on them:

    python -m hatnet_jax.tools.predict --model=hatnet_tiny --weights=DIR [--top_k=5] [--batch_size=32]
        [--image_size=224] [--output=preds.csv] [--output=preds.json] IMAGES_OR_DIRS...
    python -m hatnet_jax.tools.predict --weights=DETECTION_WORKDIR [--score_threshold=0.3]
        [--output_dir=predictions] [--output=detections.json] IMAGES_OR_DIRS...

Classification: images get exactly the training run's evaluation transform
(`hatnet_jax.data.classification.transforms.EvalCrop`: shorter side resized to image_size / 0.875, center
crop, antialiased bicubic; then the mean/std normalisation) and run in batches of `--batch_size`.
Detection (the run's config, or --config, has task 'detection'): each image, one at a time, gets the
evaluation's resize (`config.data.scale` keeping the ratio, bilinear), normalisation and zero padding to a
multiple of `config.data.size_divisor`; OUTPUT_DIR/NAME.png shows the boxes scoring >= --score_threshold on
the original image and OUTPUT_DIR/NAME.json lists them (xyxy in original pixels).
Directories are searched recursively for .jpg/.jpeg/.png/.gif/.bmp. Files that cannot be read are reported
on stderr and skipped; the exit status is 1 only when no image could be read (2 for a usage error).
"""
import argparse
import ast
import csv
import json
import os
import sys
import time

import numpy as np

from hatnet_jax.tools import inference
from hatnet_jax.tools.inference import UserError


def add_model_flags(parser: argparse.ArgumentParser, *, image_size_help: str):
  parser.add_argument('--weights', required=True, help='converted weights (python -m hatnet_jax.tools.convert), a '
                      'training checkpoint WORKDIR/checkpoints/STEP/state, or a training workdir')
  parser.add_argument('--model', default=None, help='model name (default: the training run\'s, else hatnet_tiny)')
  parser.add_argument('--model_overrides', default=None,
                      help='JSON of variant fields, e.g. \'{"dims": [32, 64, 96, 128], "head_dim": 16}\'')
  parser.add_argument('--config', default=None, help='training config file[:variant] whose model and '
                      'data settings to use, e.g. configs/digits.py')
  parser.add_argument('--image_size', type=int, default=None, help=image_size_help)


def load(args):
  """(settings, model, variables, weights_path, workdir) from the model flags."""
  weights_path, workdir = inference.resolve_weights(args.weights)
  settings = inference.resolve_settings(args, weights_path, workdir)
  model = inference.create_model(settings)
  variables = inference.load_variables(model, weights_path)
  return settings, model, variables, weights_path, workdir


def make_apply(model):
  """jitted (variables, normalised NHWC images) -> softmax probabilities."""
  import jax  # pylint: disable=g-import-not-at-top
  from hatnet_jax.training import xla_options  # pylint: disable=g-import-not-at-top
  return jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False), axis=-1),
                 compiler_options=xla_options.compiler_options())


def run_batch(apply, variables, images: np.ndarray, batch_size: int) -> np.ndarray:
  """Probabilities of up to batch_size images; a short batch is padded (one compilation serves all)."""
  n = len(images)
  if n < batch_size:
    images = np.concatenate([images, np.zeros((batch_size - n,) + images.shape[1:], images.dtype)])
  return np.asarray(apply(variables, images))[:n]


def predict_arrays(model, variables, images: np.ndarray, batch_size: int) -> np.ndarray:
  """Softmax probabilities [N, classes] of normalised NHWC images, in batches of batch_size."""
  apply = make_apply(model)
  out = [run_batch(apply, variables, images[s:s + batch_size], batch_size) for s in range(0, len(images), batch_size)]
  return np.concatenate(out) if out else np.zeros((0, model.num_classes), np.float32)


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """(indices, probabilities) [N, k], best first (ties: lower index first)."""
  k = min(k, probs.shape[-1])
  idx = np.argsort(-probs, axis=-1, kind='stable')[:, :k]
  return idx, np.take_along_axis(probs, idx, axis=-1)


def format_table(rows) -> str:
  """rows: [(file, [(name, prob), ...])] -> an aligned text table."""
  if not rows:
    return ''
  k = max(len(p) for _, p in rows)
  header = ['file'] + [f'top-{i + 1}' for i in range(k)]
  cells = [[f] + [f'{name} {100 * p:.1f}%' for name, p in preds] for f, preds in rows]
  widths = [max(len(r[i]) if i < len(r) else 0 for r in [header] + cells) for i in range(len(header))]
  lines = ['  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + cells]
  return '\n'.join(lines)


def write_outputs(paths, results, k):
  for path in paths:
    ext = os.path.splitext(path)[1].lower()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if ext == '.json':
      with open(path, 'w', encoding='utf-8') as f:
        json.dump([{'file': r['file'], 'predictions': r['predictions']} for r in results], f, indent=1)
    else:
      with open(path, 'w', newline='', encoding='utf-8') as f:
        w = csv.writer(f)
        w.writerow(['file'] + [c for i in range(k) for c in (f'top{i + 1}_class', f'top{i + 1}_index',
                                                             f'top{i + 1}_prob')])
        for r in results:
          w.writerow([r['file']] + [c for p in r['predictions'] for c in (p['name'], p['index'],
                                                                          f"{p['prob']:.6f}")])


# ---------------------------------------------------------------------------------------------------------
# Detection (config.task == 'detection')

_RETINA_CLS = ('bbox_head', 'retina_cls', 'kernel')  # [3, 3, C, anchors x classes]
_DET_MODEL_FIELDS = ('neck_channels', 'head_channels', 'num_anchors')  # RetinaNet's own create() fields


def _flat_value(value):
  """A value of a run's recorded flat config (monitor.hparams: None written as '', tuples as text)."""
  try:
    return None if value == '' else ast.literal_eval(value) if isinstance(value, str) else value
  except (ValueError, SyntaxError):
    return value


def detection_config(args, workdir):
  """The training config if it is a detection one, else None: --config if given, else the config the run
  recorded in WORKDIR/run.json."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  if args.config:
    config = inference.load_config_file(args.config)
  else:
    from flax import traverse_util  # pylint: disable=g-import-not-at-top
    flat = inference.run_hparams(workdir) if workdir else {}
    config = ml_collections.ConfigDict(traverse_util.unflatten_dict(
        {tuple(k.split('.')): _flat_value(v) for k, v in flat.items()}))
  if config.get('task') == 'instance_segmentation':
    raise UserError('predict draws classification, segmentation and RetinaNet outputs; for a Mask R-CNN run use '
                    "main.py with --config.mode=eval (TensorBoard's pictures with masks, and "
                    'DIR/eval/detections_<step>.json with boxes and RLE masks)')
  return config if config.get('task') == 'detection' else None


def load_detection(config, weights_path):
  """(Detection task, RetinaNet model, variables) of a detection config; num_classes from the checkpoint."""
  from hatnet_jax import models  # pylint: disable=g-import-not-at-top
  from hatnet_jax import tasks  # pylint: disable=g-import-not-at-top
  try:
    task = tasks.create(config)
    task.validate()
  except (ValueError, AttributeError, KeyError) as e:
    raise UserError(f'the detection config does not fit: {e}') from e
  shape = inference.saved_param_shape(weights_path, *_RETINA_CLS)
  anchors = int(config.model.get('num_anchors', 9))
  if shape is None or shape[-1] % anchors:
    raise UserError(f'--weights: {weights_path} is no RetinaNet checkpoint with {anchors} anchors per location '
                    f'(params/{"/".join(_RETINA_CLS)}: {shape}), but the config is a detection one '
                    f'({config.model.name}); pass the weights trained with it')
  fields = set(models.Variant.__dataclass_fields__) | set(_DET_MODEL_FIELDS)
  settings = inference.Settings(model=config.model.name, num_classes=shape[-1] // anchors,
                                model_overrides={k: v for k, v in config.model.items() if k in fields})
  model = inference.create_model(settings)
  return task, model, inference.load_variables(model, weights_path)


class DetPreprocessor(inference.Preprocessor):
  """Image file -> the evaluation's input (`hatnet_jax.data.detection.transforms`: the stored pixels decoded,
  resized to fit config.data.scale keeping the ratio, bilinear as cv2) padded with 0 to a multiple of
  size_divisor, with the original image; TF ops on the CPU, the same errors as `inference.Preprocessor`."""

  def __init__(self, d):  # pylint: disable=super-init-not-called
    from hatnet_jax.data.decode import decode_image  # pylint: disable=g-import-not-at-top
    from hatnet_jax.data.detection import transforms  # pylint: disable=g-import-not-at-top
    from hatnet_jax.data.segmentation import transforms as seg_transforms  # pylint: disable=g-import-not-at-top
    from hatnet_jax.data.tf_host import tf  # pylint: disable=g-import-not-at-top
    self.scale, self.size_divisor = tuple(int(x) for x in d.scale), int(d.size_divisor)
    self._transforms, self._tf = transforms, tf

    def decode_resize(data):
      img = decode_image(data)
      nh, nw = seg_transforms.tf_rescale_size(tf.shape(img)[0], tf.shape(img)[1], max(self.scale), min(self.scale))
      return img, seg_transforms.resize_bilinear(img, nh, nw)

    self._fn = tf.function(decode_resize, input_signature=[tf.TensorSpec([], tf.string)])

  def __call__(self, data: bytes) -> dict:
    original, resized = (x.numpy() for x in self._fn(self._tf.constant(data)))
    (h, w), (nh, nw) = original.shape[:2], resized.shape[:2]
    ph, pw = self._transforms.padded_size(h, w, self.scale, self.size_divisor)
    image = np.zeros((ph, pw, 3), np.uint8)
    image[:nh, :nw] = resized
    # mmdet's scale_factor (new / old per side, float32 of the float64 ratio), as transforms.scale_boxes.
    return dict(original=original, image=image, image_size=np.array([nh, nw], np.int32),
                scale=np.array([nh / h, nw / w], np.float32))


def make_detect(task, model, d):
  """jitted (variables, one DetPreprocessor output) -> Detection.predict's dict for that image (batch of 1);
  the normalisation is the eval pipeline's (x / 255 - mean) / std with 0 in the padding."""
  import jax  # pylint: disable=g-import-not-at-top
  from hatnet_jax.data import stream  # pylint: disable=g-import-not-at-top
  from hatnet_jax.training import xla_options  # pylint: disable=g-import-not-at-top
  mean, std = tuple(float(x) for x in d.mean), tuple(float(x) for x in d.std)

  def detect(variables, image, image_size, scale):
    x = stream.normalize_pad(image, image_size, mean, std)
    return task.predict(model, variables, {'image': x, 'image_size': image_size, 'scale': scale})

  jitted = jax.jit(detect, compiler_options=xla_options.compiler_options())  # compiles once per padded size
  return lambda variables, x: {k: np.asarray(v)[0] for k, v in jitted(
      variables, x['image'][None], x['image_size'][None], x['scale'][None]).items()}


def detection_names(d, num_classes, args, weights_path, workdir):
  """(class names, where from, category ids or None): --class_names, class_names.txt of the run or beside the
  weights, else the prepared dataset's metadata (nothing is prepared here), else the indices."""
  names, source = inference.class_names(inference.Settings(num_classes=num_classes),
                                        names_file=args.class_names, weights_path=weights_path, workdir=workdir)
  try:
    from hatnet_jax.data.detection import sources  # pylint: disable=g-import-not-at-top
    builder = sources.get_builder(d)
    meta = builder.info.metadata if builder.is_prepared() else {}
  except Exception:  # pylint: disable=broad-except
    meta = {}
  ids = [int(c) for c in meta.get('category_ids', [])]
  if names == [str(i) for i in range(num_classes)] and len(meta.get('class_names', [])) == num_classes:
    names, source = [str(n) for n in meta['class_names']], f'the dataset {d.dataset}'
  return names, source, ids if len(ids) == num_classes else None


def detection_record(path, out, threshold, names, category_ids, size):
  """The JSON of one image: its detections scoring >= threshold, best first, boxes xyxy in original pixels."""
  keep = np.flatnonzero(np.asarray(out['valid'], bool) & (np.asarray(out['scores']) >= threshold))
  dets = []
  for i in keep:
    label = int(out['labels'][i])
    det = {'box': [float(v) for v in out['boxes'][i]], 'score': float(out['scores'][i]), 'class_index': label,
           'class_name': names[label]}
    if category_ids:
      det['category_id'] = category_ids[label]
    dets.append(det)
  return {'file': path, 'height': int(size[0]), 'width': int(size[1]), 'score_threshold': threshold,
          'detections': dets}


def _output_stem(output_dir, path, used):
  """OUTPUT_DIR/NAME (NAME_2, ... if taken by an earlier output or an input file) for an input file."""
  stem = os.path.splitext(os.path.basename(path))[0]
  out, n = os.path.join(output_dir, stem), 1
  while os.path.abspath(out) in used:
    n += 1
    out = os.path.join(output_dir, f'{stem}_{n}')
  used.add(os.path.abspath(out))
  return out


def write_detection_outputs(paths, records):
  """--output: .json (the per-image records as a list) or .csv (one row per detection)."""
  for path in paths:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w', newline='', encoding='utf-8') as f:
      if path.lower().endswith('.json'):
        json.dump(records, f, indent=1)
        continue
      w = csv.writer(f)
      w.writerow(['file', 'x1', 'y1', 'x2', 'y2', 'score', 'class_index', 'class_name', 'category_id'])
      for r in records:
        for det in r['detections']:
          w.writerow([r['file'], *(f'{v:.2f}' for v in det['box']), f"{det['score']:.6f}", det['class_index'],
                      det['class_name'], det.get('category_id', '')])


def _run_detection(args, files, config, weights_path, workdir) -> int:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from hatnet_jax.visualization import boxes as box_pictures  # pylint: disable=g-import-not-at-top
  d = config.data
  given = [flag for flag in ('model', 'model_overrides', 'image_size') if getattr(args, flag)]
  if given:
    raise UserError(f'--{given[0]} is for classification; a detection model takes config.model and the resize '
                    f'(config.data.scale={tuple(d.scale)}, keeping the ratio) from its config: the run\'s or --config')
  task, model, variables = load_detection(config, weights_path)
  names, names_source, category_ids = detection_names(d, model.num_classes, args, weights_path, workdir)
  pre, detect = DetPreprocessor(d), make_detect(task, model, d)
  os.makedirs(args.output_dir, exist_ok=True)
  used = {os.path.abspath(os.path.splitext(f)[0]) for f in files}
  t0, records = time.time(), []
  for path in files:  # one decoded image at a time
    try:
      x = pre.load(path)
    except (OSError, ValueError) as e:
      print(f'skipped {path}: {getattr(e, "strerror", None) or e}', file=sys.stderr)
      continue
    record = detection_record(path, detect(variables, x), args.score_threshold, names, category_ids,
                              x['original'].shape[:2])
    dets = record['detections']
    picture = box_pictures.draw_boxes(x['original'], [t['box'] for t in dets], [t['class_index'] for t in dets],
                                      [t['score'] for t in dets], names)
    stem = _output_stem(args.output_dir, path, used)
    Image.fromarray(picture).save(stem + '.png')
    with open(stem + '.json', 'w', encoding='utf-8') as f:
      json.dump(record, f, indent=1)
    records.append(record)
    shown = ', '.join(f"{t['class_name']} {t['score']:.2f}" for t in dets[:5]) + (', ...' if len(dets) > 5 else '')
    print(f'{path}  {len(dets)} detection(s) >= {args.score_threshold:g}{": " + shown if dets else ""}'
          f'  -> {stem}.png, .json')
  if not records:
    print('error: none of the files could be read as an image', file=sys.stderr)
    return 1
  print(f'{config.model.name} ({model.num_classes} classes, names: {names_source}) from {weights_path}; '
        f'{len(records)} image(s) resized to fit {tuple(d.scale)}, padded to {d.size_divisor}, in '
        f'{time.time() - t0:.1f}s', file=sys.stderr)
  write_detection_outputs(args.output, records)
  for path in args.output:
    print(f'wrote {path}', file=sys.stderr)
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m hatnet_jax.tools.predict', description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split('\n\n', 1)[1])
  add_model_flags(parser, image_size_help='input size (default: the training run\'s, else 224)')
  parser.add_argument('--top_k', type=int, default=5)
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--class_names', default=None, help='file of class names, one per line (or a JSON list)')
  parser.add_argument('--output', action='append', default=[],
                      help='write the predictions to a .csv or .json file (repeatable)')
  parser.add_argument('--score_threshold', type=float, default=0.3,
                      help='detection: draw and list the boxes scoring at least this (0: all the model keeps)')
  parser.add_argument('--output_dir', default='predictions', help='detection: where NAME.png and NAME.json go')
  parser.add_argument('inputs', nargs='+', metavar='IMAGES_OR_DIRS')
  args = parser.parse_args(argv)
  if args.top_k < 1 or args.batch_size < 1:
    parser.error('--top_k and --batch_size must be >= 1')
  if not 0.0 <= args.score_threshold <= 1.0:
    parser.error(f'--score_threshold must lie in [0, 1]; got {args.score_threshold}')
  for path in args.output:
    if os.path.splitext(path)[1].lower() not in ('.csv', '.json'):
      parser.error(f'--output {path}: use a .csv or .json file name')
  inference.quiet_tensorflow()
  try:
    return _run(args)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2


def _run(args) -> int:
  files, problems = inference.expand_inputs(args.inputs)
  for name, why in problems:
    print(f'skipped {name}: {why}', file=sys.stderr)
  if not files:
    print('error: no image files to classify', file=sys.stderr)
    return 1
  weights_path, workdir = inference.resolve_weights(args.weights)
  config = detection_config(args, workdir)
  if config is not None:
    return _run_detection(args, files, config, weights_path, workdir)
  settings, model, variables, weights_path, workdir = load(args)
  names, names_source = inference.class_names(settings, names_file=args.class_names, weights_path=weights_path,
                                              workdir=workdir)
  pre = inference.Preprocessor(settings)
  apply = make_apply(model)
  t0 = time.time()
  results, pending = [], []

  def flush():
    batch = inference.normalize(np.stack([img for _, img in pending]), settings)
    idx, p = top_k(run_batch(apply, variables, batch, args.batch_size), args.top_k)
    for n, (f, _) in enumerate(pending):
      results.append({'file': f, 'predictions': [{'index': int(i), 'name': names[i], 'prob': float(q)}
                                                 for i, q in zip(idx[n], p[n])]})
    pending.clear()

  for path in files:  # decoded images are held for one batch at a time
    try:
      pending.append((path, pre.load(path)))
    except (OSError, ValueError) as e:
      print(f'skipped {path}: {getattr(e, "strerror", None) or e}', file=sys.stderr)
    if len(pending) == args.batch_size:
      flush()
  if pending:
    flush()
  if not results:
    print('error: none of the files could be read as an image', file=sys.stderr)
    return 1
  print(f'{settings.model} ({settings.num_classes} classes, names: {names_source}) from {weights_path}; '
        f'{len(results)} image(s) at {settings.image_size}px in {time.time() - t0:.1f}s', file=sys.stderr)
  print(format_table([(r['file'], [(q['name'], q['prob']) for q in r['predictions']]) for r in results]))
  write_outputs(args.output, results, min(args.top_k, settings.num_classes))
  for path in args.output:
    print(f'wrote {path}', file=sys.stderr)
  return 0


if __name__ == '__main__':
  sys.exit(main())
