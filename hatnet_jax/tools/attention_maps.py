"""Attention maps of HAT-Net's H-MHSA: where a token attends locally (inside its G x G window) and globally
(over the average-pooled tokens), as arrays and as overlays on the image.

    python -m hatnet_jax.tools.attention_maps --model=hatnet_tiny --weights=DIR --image=PHOTO --output_dir=OUT
        [--stage=1] [--block=0] [--points="0.5,0.5;0.3,0.7"] [--image_size=224]

writes, for every query point (y, x as fractions of the image height and width), pointN_local.png and
pointN_global.png (heads averaged, each map scaled to its maximum, the query marked by a cyan ring), and
panel.png (one row per point: the input, local, global). The image gets the evaluation transform first
(resize the shorter side, center crop), so the overlays are drawn on exactly what the model sees.

In Python: `hatnet_jax.visualization.attention` (the maps as arrays, panels for TensorBoard).
"""
import argparse
import os
import sys

import numpy as np

from hatnet_jax.visualization.attention import DEFAULT_POINTS, attention_maps, point_overlays


def parse_points(text: str) -> list[tuple[float, float]]:
  points = []
  for item in text.replace(' ', '').split(';'):
    if not item:
      continue
    try:
      y, x = (float(v) for v in item.split(','))
    except ValueError as e:
      raise ValueError(f'--points: {item!r} is not "y,x" (fractions of the image height and width)') from e
    if not (0 <= y <= 1 and 0 <= x <= 1):
      raise ValueError(f'--points: {item!r} lies outside the image (use fractions in [0, 1])')
    points.append((y, x))
  if not points:
    raise ValueError('--points: give at least one "y,x"')
  return points


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m hatnet_jax.tools.attention_maps', description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split('\n\n', 1)[1])
  from hatnet_jax.tools import inference, predict  # pylint: disable=g-import-not-at-top
  predict.add_model_flags(parser, image_size_help='input size (default: the training run\'s, else 224)')
  parser.add_argument('--image', required=True, help='a photo (JPEG, PNG, ...)')
  parser.add_argument('--output_dir', required=True)
  parser.add_argument('--stage', type=int, default=1, help='1-4 (stage 1: the finest map, 8x8 windows)')
  parser.add_argument('--block', type=int, default=0, help='block of the stage, from 0')
  parser.add_argument('--points', default=';'.join(f'{y},{x}' for y, x in DEFAULT_POINTS),
                      help='query points "y,x;y,x" as fractions of the image height and width')
  args = parser.parse_args(argv)
  try:
    points = parse_points(args.points)
  except ValueError as e:
    parser.error(str(e))
  inference.quiet_tensorflow()
  try:
    settings, model, variables, _, _ = predict.load(args)
    v = model.variant
    if not 1 <= args.stage <= len(v.dims):
      raise inference.UserError(f'--stage must be in 1..{len(v.dims)}')
    if not 0 <= args.block < v.depths[args.stage - 1]:
      raise inference.UserError(f'--block: stage {args.stage} of {settings.model} has blocks '
                                f'0..{v.depths[args.stage - 1] - 1}')
    pre = inference.Preprocessor(settings)
    try:
      display = pre.load(args.image)
    except (OSError, ValueError) as e:
      raise inference.UserError(f'--image {args.image}: {getattr(e, "strerror", None) or e}') from e
  except inference.UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  from PIL import Image  # pylint: disable=g-import-not-at-top
  images = inference.normalize(display[None], settings)
  maps = attention_maps(model, variables, images, args.stage, args.block)
  os.makedirs(args.output_dir, exist_ok=True)
  rows = []
  for n, p in enumerate(points):
    marked, loc, glob = point_overlays(display, maps, 0, p, args.stage)
    if loc is not None:
      Image.fromarray(loc).save(os.path.join(args.output_dir, f'point{n}_local.png'))
    Image.fromarray(glob).save(os.path.join(args.output_dir, f'point{n}_global.png'))
    rows.append(np.concatenate([marked] + ([loc] if loc is not None else []) + [glob], axis=1))
  Image.fromarray(np.concatenate(rows, axis=0)).save(os.path.join(args.output_dir, 'panel.png'))
  kind = (f'local {maps["grid"]}x{maps["grid"]} windows, global over {maps["pooled_shape"][0]}x'
          f'{maps["pooled_shape"][1]} pooled tokens' if maps['local'] is not None
          else f'plain attention over {maps["shape"][0]}x{maps["shape"][1]} tokens')
  print(f'stage {args.stage} block {args.block} ({maps["shape"][0]}x{maps["shape"][1]} tokens; {kind}); '
        f'{len(points)} point(s) -> {os.path.abspath(args.output_dir)} (panel.png, pointN_local.png, pointN_global.png)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
