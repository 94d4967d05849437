"""Elementary box geometry, as mmdetection 3.3.0 computes it for HorizontalBoxes.

Boxes are float32 `[..., 4]` arrays `(x1, y1, x2, y2)` in pixels, mmdet 3.x convention: width is
`x2 - x1` (no +1). Every function is elementwise or pairwise over the last axes and broadcasts over any
leading (batch) axes, so it works under jit and vmap.
"""
from typing import Sequence, Union

import jax
import jax.numpy as jnp

from hatnet_jax.structures.exact import divide, rounded

ArrayLike = Union[jax.Array, Sequence[float]]
# mmdet's bbox_overlaps default: the union (or the IoF's area) is raised to eps before dividing.
IOU_EPS = 1e-6


def as_boxes(name: str, boxes: jax.Array) -> jax.Array:
  """`boxes` as a float32 array, or one ValueError naming `name` when its last axis is not 4."""
  boxes = jnp.asarray(boxes)
  if boxes.ndim < 1 or boxes.shape[-1] != 4:
    raise ValueError(f'{name} must have shape [..., 4] (x1, y1, x2, y2), got {boxes.shape}')
  return boxes.astype(jnp.float32)


def area(boxes: jax.Array) -> jax.Array:
  """[...] areas `(x2 - x1) * (y2 - y1)` (mmdet 3.x: no +1; a flipped box has a negative area)."""
  boxes = as_boxes('boxes', boxes)
  return rounded((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]))


def _pairwise_overlap(a: jax.Array, b: jax.Array) -> jax.Array:
  """[..., N, M] intersection areas, clamped at 0 per side as mmdet's bbox_overlaps does."""
  lt = jnp.maximum(a[..., :, None, :2], b[..., None, :, :2])
  rb = jnp.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  return rounded(wh[..., 0] * wh[..., 1])


def pairwise_iou(a: jax.Array, b: jax.Array, eps: float = IOU_EPS) -> jax.Array:
  """[..., N, M] IoU of every box of `a` [..., N, 4] with every box of `b` [..., M, 4].

  mmdet's `bbox_overlaps(a, b, mode='iou')`: overlap / max(area_a + area_b - overlap, eps), so two empty
  boxes have IoU 0 (torchvision's box_iou gives NaN there). Same float32 operation order as mmdet.
  """
  a, b = as_boxes('a', a), as_boxes('b', b)
  overlap = _pairwise_overlap(a, b)
  union = area(a)[..., :, None] + area(b)[..., None, :] - overlap
  return overlap / jnp.maximum(union, jnp.float32(eps))


def pairwise_iof(a: jax.Array, b: jax.Array, eps: float = IOU_EPS) -> jax.Array:
  """[..., N, M] intersection over the area of the `a` box (mmdet's `bbox_overlaps(a, b, mode='iof')`):
  how much of each `a` box lies inside each `b` box; the assigner's crowd-region test."""
  a, b = as_boxes('a', a), as_boxes('b', b)
  return divide(_pairwise_overlap(a, b), jnp.maximum(area(a)[..., :, None], jnp.float32(eps)))


def _hw(hw: ArrayLike) -> tuple[jax.Array, jax.Array]:
  """(h, w) each shaped to broadcast against [..., N] box coordinates; `hw` is [2] or [..., 2]."""
  hw = jnp.asarray(hw, jnp.float32)
  if hw.ndim < 1 or hw.shape[-1] != 2:
    raise ValueError(f'the image size must be (h, w) with shape [2] or [..., 2], got {hw.shape}')
  return hw[..., 0, None], hw[..., 1, None]


def clip(boxes: jax.Array, hw: ArrayLike) -> jax.Array:
  """Boxes [..., N, 4] clamped into the image: x to [0, w], y to [0, h] (mmdet HorizontalBoxes.clip_).

  `hw` is (h, w) [2] for all boxes, or [..., 2] per leading index (e.g. [B, 2] for boxes [B, N, 4]).
  """
  boxes = as_boxes('boxes', boxes)
  h, w = _hw(hw)
  x = jnp.clip(boxes[..., 0::2], 0.0, w[..., None])
  y = jnp.clip(boxes[..., 1::2], 0.0, h[..., None])
  return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def flip_horizontal(boxes: jax.Array, width: ArrayLike) -> jax.Array:
  """Boxes mirrored in an image `width` wide: x1' = w - x2, x2' = w - x1 (mmdet RandomFlip,
  HorizontalBoxes.flip_ 'horizontal'). `width` is a scalar or [...] per leading index."""
  boxes = as_boxes('boxes', boxes)
  w = jnp.asarray(width, jnp.float32)[..., None]
  return jnp.stack([w - boxes[..., 2], boxes[..., 1], w - boxes[..., 0], boxes[..., 3]], axis=-1)


def scale(boxes: jax.Array, factor: ArrayLike) -> jax.Array:
  """Boxes times `factor` = (sy, sx) (mmdet's scale_boxes / HorizontalBoxes.rescale_, which take the
  factor as (w, h)): x by sx, y by sy. `factor` is [2] or [..., 2] per leading index."""
  boxes = as_boxes('boxes', boxes)
  sy, sx = _hw(factor)
  return boxes * jnp.stack([sx, sy, sx, sy], axis=-1)
