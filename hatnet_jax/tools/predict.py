"""Classifies image files with HAT-Net weights:

    python -m hatnet_jax.tools.predict --model=hatnet_tiny --weights=DIR [--top_k=5] [--batch_size=32]
        [--image_size=224] [--output=preds.csv] [--output=preds.json] IMAGES_OR_DIRS...

Images get exactly the training run's evaluation transform (`hatnet_jax.data.classification.transforms.EvalCrop`: shorter
side resized to image_size / 0.875, center crop, antialiased bicubic; then the mean/std normalisation) and
run in batches of `--batch_size`. Directories are searched recursively for .jpg/.jpeg/.png/.gif/.bmp.
Files that cannot be read are reported on stderr and skipped; the exit status is 1 only when no image could
be read (2 for a usage error).
"""
import argparse
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
  parser.add_argument('inputs', nargs='+', metavar='IMAGES_OR_DIRS')
  args = parser.parse_args(argv)
  if args.top_k < 1 or args.batch_size < 1:
    parser.error('--top_k and --batch_size must be >= 1')
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
