"""mmdetection 3.3.0's DeltaXYWHBBoxCoder (R-CNN box deltas), the box regression targets of RetinaNet.

A box is coded relative to an anchor as (dx, dy, dw, dh) = ((gx - px) / pw, (gy - py) / ph, log(gw / pw),
log(gh / ph)), then normalised by (means, stds). Both directions broadcast over leading axes ([..., 4]),
with mmdet's float32 operation order (`bbox2delta`, `delta2bbox` with add_ctr_clamp=False).
"""
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from hatnet_jax.structures import boxes as box_ops
from hatnet_jax.structures.exact import divide, rounded

# mmdet's default: a decoded side may grow or shrink by at most 1000 / 16 = 62.5 times its anchor's.
WH_RATIO_CLIP = 16 / 1000


def _vector(name: str, values: Sequence[float]) -> jax.Array:
  values = jnp.asarray(values, jnp.float32)
  if values.shape != (4,):
    raise ValueError(f'{name} must hold 4 numbers (dx, dy, dw, dh), got shape {values.shape}')
  return values


def encode(anchors: jax.Array, gt: jax.Array, means: Sequence[float] = (0., 0., 0., 0.),
           stds: Sequence[float] = (1., 1., 1., 1.)) -> jax.Array:
  """Deltas [..., 4] that move `anchors` [..., 4] onto `gt` [..., 4] (mmdet `bbox2delta`).

  Shapes broadcast. A zero-width anchor or gt gives inf/NaN as in mmdet; mask such rows out.
  """
  anchors = box_ops.as_boxes('anchors', anchors)
  gt = box_ops.as_boxes('gt', gt)
  px = (anchors[..., 0] + anchors[..., 2]) * 0.5
  py = (anchors[..., 1] + anchors[..., 3]) * 0.5
  pw = anchors[..., 2] - anchors[..., 0]
  ph = anchors[..., 3] - anchors[..., 1]
  gx = (gt[..., 0] + gt[..., 2]) * 0.5
  gy = (gt[..., 1] + gt[..., 3]) * 0.5
  gw = gt[..., 2] - gt[..., 0]
  gh = gt[..., 3] - gt[..., 1]
  deltas = jnp.stack([divide(gx - px, pw), divide(gy - py, ph), jnp.log(divide(gw, pw)), jnp.log(divide(gh, ph))],
                     axis=-1)
  return divide(deltas - _vector('means', means), _vector('stds', stds))


def decode(anchors: jax.Array, deltas: jax.Array, means: Sequence[float] = (0., 0., 0., 0.),
           stds: Sequence[float] = (1., 1., 1., 1.), max_shape: Optional[jax.Array] = None,
           wh_ratio_clip: float = WH_RATIO_CLIP) -> jax.Array:
  """Boxes [..., 4] from `anchors` [..., 4] moved by `deltas` [..., 4] (mmdet `delta2bbox`).

  dw, dh are clamped to +-|log(wh_ratio_clip)| before exp (no centre clamp: add_ctr_clamp=False). With
  `max_shape` = (h, w) ([2], or [..., 2] per leading index, e.g. [B, 2] for deltas [B, N, 4]) x is
  clamped to [0, w] and y to [0, h], as mmdet does when given the image shape (clip_border=True).
  """
  anchors = box_ops.as_boxes('anchors', anchors)
  deltas = jnp.asarray(deltas, jnp.float32)
  if deltas.ndim < 1 or deltas.shape[-1] != 4:
    raise ValueError(f'deltas must have shape [..., 4] (dx, dy, dw, dh), got {deltas.shape}; '
                     'class-specific deltas [N, K * 4] are not supported (RetinaNet regresses 4 per anchor)')
  denorm = rounded(deltas * _vector('stds', stds)) + _vector('means', means)
  dxy, dwh = denorm[..., :2], denorm[..., 2:]
  pxy = (anchors[..., :2] + anchors[..., 2:]) * 0.5
  pwh = anchors[..., 2:] - anchors[..., :2]
  max_ratio = abs(math.log(wh_ratio_clip))
  gxy = pxy + rounded(pwh * dxy)
  gwh = pwh * jnp.exp(jnp.clip(dwh, -max_ratio, max_ratio))
  boxes = jnp.concatenate([gxy - gwh * 0.5, gxy + gwh * 0.5], axis=-1)
  if max_shape is not None:
    boxes = box_ops.clip(boxes, max_shape)
  return boxes
