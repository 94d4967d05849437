"""Attention maps of HAT-Net's H-MHSA: where a token attends locally (inside its G x G window) and globally
(over the average-pooled tokens), as arrays and as overlays on the image.

    python -m hatnet_jax.attention_maps --model=hatnet_tiny --weights=DIR --image=PHOTO --output_dir=OUT
        [--stage=1] [--block=0] [--points="0.5,0.5;0.3,0.7"] [--image_size=224]

writes, for every query point (y, x as fractions of the image height and width), pointN_local.png and
pointN_global.png (heads averaged, each map scaled to its maximum, the query marked by a cyan ring), and
panel.png (one row per point: the input, local, global). The image gets the evaluation transform first
(resize the shorter side, center crop), so the overlays are drawn on exactly what the model sees.

In Python: `attention_maps(model, variables, images, stage, block)` returns the weights of one block;
`attention_images(...)` returns uint8 panels [N, H, W, 3] (e.g. for TensorBoard at evaluation time).
The weights come from an explicit-softmax path of the same math (`HMHSA.sow_attention`); the model's
default fused attention is not involved.
"""
import argparse
import os
import sys
from typing import Sequence

import numpy as np

DEFAULT_POINTS = ((0.5, 0.5), (0.3, 0.3), (0.7, 0.7))


def stage_shape(height: int, width: int, stage: int) -> tuple[int, int]:
  """The (h, w) of stage `stage` (1-4) for an input of height x width: two stride-2 stem convs, then one
  stride-2 conv before each later stage, each ceil(n / 2)."""
  h, w = height, width
  for _ in range(stage + 1):
    h, w = -(-h // 2), -(-w // 2)
  return h, w


def _collection(intermediates, stage: int):
  try:
    return intermediates[f'stage{stage}']['blocks']['attn']
  except KeyError as e:
    raise ValueError(f'no attention weights for stage {stage}; stages are 1..{len(intermediates)}') from e


def attention_maps(model, variables, images, stage: int, block: int) -> dict:
  """The attention weights of block `block` (0-based) of stage `stage` (1-based) for normalised NHWC images.

  Returns a dict of numpy arrays (float32, weights sum to 1 over the last axis):
    'local':  [B, heads, windows, G*G, G*G]: query position -> key position inside each G x G window
              (windows row-major over the map padded to whole windows; padded keys have weight 0),
              or None for a stage with G == 1 (plain attention over all tokens);
    'global': [B, heads, h*w, hp*wp]: each token (row-major) over the pooled tokens (row-major); with
              G == 1 over all h*w tokens;
  and 'shape' (h, w), 'grid' G, 'ds_ratio' r, 'pooled_shape' (hp, wp).
  """
  import jax  # pylint: disable=g-import-not-at-top
  v = model.variant
  if not 1 <= stage <= len(v.dims):
    raise ValueError(f'stage must be in 1..{len(v.dims)}; got {stage}')
  if not 0 <= block < v.depths[stage - 1]:
    raise ValueError(f'stage {stage} has blocks 0..{v.depths[stage - 1] - 1}; got block {block}')
  sown = model.clone(sow_attention=True)
  _, state = jax.jit(lambda var, x: sown.apply(var, x, train=False, mutable=['intermediates']))(
      {'params': variables['params']}, images)
  attn = _collection(state['intermediates'], stage)
  grid, ratio = v.grid_sizes[stage - 1], v.ds_ratios[stage - 1]
  h, w = stage_shape(images.shape[1], images.shape[2], stage)
  local = np.asarray(attn['local_attention'][0][block], np.float32) if 'local_attention' in attn else None
  glob = np.asarray(attn['global_attention'][0][block], np.float32)
  pooled = (h, w) if grid == 1 else (-(-h // ratio), -(-w // ratio))
  return {'local': local, 'global': glob, 'shape': (h, w), 'grid': grid, 'ds_ratio': ratio, 'pooled_shape': pooled}


def token_of(point: tuple[float, float], shape: tuple[int, int]) -> tuple[int, int]:
  """The stage token (ty, tx) under a point given as (y, x) fractions of the image."""
  (py, px), (h, w) = point, shape
  return min(int(py * h), h - 1), min(int(px * w), w - 1)


def local_map(maps: dict, index: int, token: tuple[int, int]) -> np.ndarray | None:
  """[h, w]: the heads-averaged local attention of `token` of image `index`; 0 outside its window."""
  if maps['local'] is None:
    return None
  (h, w), g = maps['shape'], maps['grid']
  ty, tx = token
  nw = -(-w // g)
  weights = maps['local'][index].mean(axis=0)[(ty // g) * nw + tx // g, (ty % g) * g + tx % g].reshape(g, g)
  out = np.zeros((-(-h // g) * g, nw * g), np.float32)
  y0, x0 = (ty // g) * g, (tx // g) * g
  out[y0:y0 + g, x0:x0 + g] = weights
  return out[:h, :w]


def global_map(maps: dict, index: int, token: tuple[int, int]) -> np.ndarray:
  """[hp, wp]: the heads-averaged global attention of `token` of image `index` over the pooled tokens."""
  (h, w), (hp, wp) = maps['shape'], maps['pooled_shape']
  return maps['global'][index].mean(axis=0)[token[0] * w + token[1]].reshape(hp, wp)


def _upsample(m: np.ndarray, cell: float, height: int, width: int) -> np.ndarray:
  """Nearest upsampling of a map whose cells cover `cell` x `cell` image pixels."""
  ys = np.minimum((np.arange(height) / cell).astype(int), m.shape[0] - 1)
  xs = np.minimum((np.arange(width) / cell).astype(int), m.shape[1] - 1)
  return m[ys][:, xs]


# A perceptually ordered colormap (dark blue -> magenta -> orange -> light yellow), piecewise linear.
_CMAP = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
                  [250, 193, 39], [252, 255, 164]], np.float32)


def colorize(m: np.ndarray) -> np.ndarray:
  """[H, W] in [0, 1] -> float RGB [H, W, 3] in 0..255."""
  x = np.clip(m, 0.0, 1.0) * (len(_CMAP) - 1)
  lo = np.floor(x).astype(int)
  hi = np.minimum(lo + 1, len(_CMAP) - 1)
  t = (x - lo)[..., None]
  return _CMAP[lo] * (1 - t) + _CMAP[hi] * t


def overlay(image: np.ndarray, heat: np.ndarray | None, point=None, alpha: float = 0.6) -> np.ndarray:
  """uint8 [H, W, 3]: `heat` ([H, W], scaled to its maximum) blended over `image`, the point marked."""
  img = image.astype(np.float32)
  if heat is not None:
    heat = heat / max(float(heat.max()), 1e-12)
    img = img * (1 - alpha) + colorize(heat) * alpha
  out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
  if point is not None:
    from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    hgt, wid = out.shape[:2]
    cy, cx, r = point[0] * hgt, point[1] * wid, max(3, min(hgt, wid) // 40)
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=(0, 255, 255), width=max(1, r // 3))
    out = np.asarray(pil)
  return out


def point_overlays(display: np.ndarray, maps: dict, index: int, point, stage: int):
  """(input with the point marked, local overlay or None, global overlay) for one image and point."""
  hgt, wid = display.shape[:2]
  stride = 2 ** (stage + 1)
  token = token_of(point, maps['shape'])
  loc = local_map(maps, index, token)
  glob = global_map(maps, index, token)
  cell = stride if maps['grid'] == 1 else stride * maps['ds_ratio']
  local_img = None if loc is None else overlay(display, _upsample(loc, stride, hgt, wid), point)
  return overlay(display, None, point), local_img, overlay(display, _upsample(glob, cell, hgt, wid), point)


def attention_images(model, variables, images, *, mean: Sequence[float], std: Sequence[float], stage: int = 1,
                     block: int = 0, points: Sequence[tuple[float, float]] = DEFAULT_POINTS,
                     max_images: int | None = None) -> np.ndarray:
  """uint8 [N, S, 3 * S, 3] panels, one per (image, point), images first: the input with the query point,
  its local attention, its global attention (heads averaged). `images` are normalised NHWC (as the eval
  batches; mean/std turn them back into pixels). For a stage without local attention (G == 1) the middle
  panel is the input image darkened."""
  images = np.asarray(images, np.float32)
  if max_images is not None:
    images = images[:max_images]
  maps = attention_maps(model, variables, images, stage, block)
  display = (np.clip(images * np.asarray(std, np.float32) + np.asarray(mean, np.float32), 0, 1) * 255
             + 0.5).astype(np.uint8)
  panels = []
  for i in range(len(images)):
    for p in points:
      marked, loc, glob = point_overlays(display[i], maps, i, p, stage)
      if loc is None:
        loc = (display[i] * 0.3).astype(np.uint8)
      panels.append(np.concatenate([marked, loc, glob], axis=1))
  return np.stack(panels)


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
  parser = argparse.ArgumentParser(prog='python -m hatnet_jax.attention_maps', description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split('\n\n', 1)[1])
  from hatnet_jax import inference, predict  # pylint: disable=g-import-not-at-top
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
