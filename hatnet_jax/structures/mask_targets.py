"""Mask R-CNN's mask targets as mmdetection 3.3.0's `mask_target` on BitmapMasks, static-shape JAX.

mmdet clips each positive RoI to the mask canvas ([0, W] x [0, H]), crops its assigned GT mask with
`BitmapMasks.crop_and_resize` (mmcv's roi_align on the float mask: spatial scale 1, aligned=True,
sampling_ratio 0, `size x size`) and binarises with `>= 0.5`. Here the same RoIAlign is `roi_align`'s
separable form on the whole canvas (a positive RoI may span the whole image, so no static window is
exact): out = Ay [size, H] @ mask [H, W] @ Ax [size, W]^T per RoI.

Memory: the GT masks stay bit-packed ([G, H, W // 8] uint8, the batch convention); RoIs are processed in
`chunk`s under lax.map, each unpacking only its own chunk's masks to float32. Peak per chunk on an
800 x 1344 canvas with size 28: chunk * (H*W*4 unpacked float + H*W bits + the weights' candidates
size*(H+W)*8*4) = chunk * ~6.6 MB, i.e. ~105 MB for the default chunk of 16 (P=128 whole-canvas float
masks at once would be 550 MB). Work: P * size * H * W multiply-adds (3.9 G for 128 RoIs there).
"""
import jax
import jax.numpy as jnp

from hatnet_jax.structures import boxes as box_ops
from hatnet_jax.structures import roi_align as roi_lib


def _targets(masks: jax.Array, boxes: jax.Array, size: int, precision) -> jax.Array:
  """[c, size, size] float32 RoIAlign values of float masks [c, H, W] in boxes [c, 4] (canvas pixels)."""
  c, height, width = masks.shape
  rois = roi_lib.roi_geometry(boxes, jnp.float32(1.0), jnp.full(c, height, jnp.int32),
                       jnp.full(c, width, jnp.int32), jnp.zeros(c, jnp.int32), (size, size), 0, True)
  zero = jnp.zeros(c, jnp.int32)
  ay = roi_lib.axis_weights(rois.y, size, rois.height, zero, height, 0)  # [c, size, H]
  ax = roi_lib.axis_weights(rois.x, size, rois.width, zero, width, 0)  # [c, size, W]
  rows = jnp.einsum('cph,chw->cpw', ay, masks, precision=precision)
  return jnp.einsum('cqw,cpw->cpq', ax, rows, precision=precision)


def mask_targets(packed_masks: jax.Array, boxes: jax.Array, gt_index: jax.Array, size: int = 28,
                 chunk: int = 16, precision=roi_lib.HIGHEST) -> jax.Array:
  """float32 [P, size, size] in {0, 1}: mmdet's mask_target for P positive RoIs of one image.

  packed_masks: uint8 [G, H, W // 8], GT row g's canvas mask packed along width with bitorder 'little'
  (`np.packbits(m, axis=-1, bitorder='little')`); boxes: [P, 4] positive RoIs in canvas pixels (clipped to
  the canvas here, as mmdet clips them to the masks' size); gt_index: int [P], the GT row of each RoI
  (the assigner's code - 1; out-of-range rows are clamped: mask padded RoIs out of the loss). One image:
  vmap over a batch. `chunk` RoIs are unpacked at a time (see the module docstring for the memory)."""
  packed_masks = jnp.asarray(packed_masks)
  if packed_masks.ndim != 3 or packed_masks.dtype != jnp.uint8:
    raise ValueError('packed_masks must be uint8 [G, H, W // 8] (np.packbits(masks, axis=-1, '
                     f"bitorder='little')), got {packed_masks.dtype} {packed_masks.shape}")
  boxes = box_ops.as_boxes('boxes', boxes)
  gt_index = jnp.asarray(gt_index)
  if boxes.ndim != 2 or gt_index.shape != boxes.shape[:1] or not jnp.issubdtype(gt_index.dtype, jnp.integer):
    raise ValueError(f'boxes must be [P, 4] and gt_index int [P]; got {boxes.shape} and {gt_index.dtype} '
                     f'{gt_index.shape}')
  if not isinstance(size, int) or size < 1 or not isinstance(chunk, int) or chunk < 1:
    raise ValueError(f'size and chunk must be positive ints, got size={size!r}, chunk={chunk!r}')
  num_gts, height, packed_width = packed_masks.shape
  width = packed_width * 8
  p = boxes.shape[0]
  if p == 0 or num_gts == 0:
    return jnp.zeros((p, size, size), jnp.float32)
  limits = jnp.asarray([width, height, width, height], jnp.float32)
  boxes = jnp.clip(boxes, 0.0, limits)
  gt_index = jnp.clip(gt_index.astype(jnp.int32), 0, num_gts - 1)
  chunk = min(chunk, p)
  pad = -p % chunk
  boxes = jnp.pad(boxes, ((0, pad), (0, 0))).reshape(-1, chunk, 4)
  gt_index = jnp.pad(gt_index, (0, pad)).reshape(-1, chunk)

  def one_chunk(args):
    chunk_boxes, chunk_index = args
    bits = jnp.unpackbits(packed_masks[chunk_index], axis=-1, bitorder='little')
    return _targets(bits.astype(jnp.float32), chunk_boxes, size, precision)

  values = jax.lax.map(one_chunk, (boxes, gt_index)).reshape(-1, size, size)[:p]
  return (values >= 0.5).astype(jnp.float32)
