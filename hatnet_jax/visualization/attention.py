"""Attention maps of HAT-Net's H-MHSA: where a token attends locally (inside its G x G window) and globally
(over the average-pooled tokens), as arrays and as overlays on the image.

`attention_maps(model, variables, images, stage, block)` returns the weights of one block;
`attention_images(...)` returns uint8 panels [N, H, W, 3] (e.g. for TensorBoard at evaluation time).
The weights come from an explicit-softmax path of the same math (`HMHSA.sow_attention`); the model's
default fused attention is not involved. The command line is `hatnet_jax.tools.attention_maps`.
"""
from typing import Sequence

import numpy as np

from hatnet_jax.visualization.images import overlay


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
