"""Instance masks for Mask R-CNN batches, in NumPy on the host: mmdet 3.3.0's mask path, pixel for pixel.

Per image, for the kept objects in order (`canvas_masks`):
  1. LoadAnnotations(with_mask=True, poly2mask=True): the annotation's segmentation decoded at the original
     size with pycocotools as mmdet's `_poly2mask`: polygons -> frPyObjects + merge + decode; uncompressed
     RLE (counts a list, crowd annotations) -> frPyObjects + decode; compressed RLE (counts a string) ->
     decode. mmdet's `_process_masks` first drops polygon parts with an odd or < 6 coordinate count; an
     object left without a part, or a dict without list/str 'counts' and 'size', becomes an ignored
     instance (mmdet's ignore_flag = 1, here `ignored`: the pipeline makes it a crowd box) with an empty mask.
     Polygons partly outside the image are clipped by pycocotools' rasteriser (as mmdet).
  2. Resize keep-ratio: BitmapMasks.rescale = mmcv.imrescale(mask, scale, 'nearest') = cv2.resize
     INTER_NEAREST to the image's resized size: output line d takes source line
     min(floor(d * (1 / (out / in))), in - 1) in float64 (OpenCV's resizeNN; `nearest_sources`).
  3. RandomFlip horizontal: columns reversed (mmcv.imflip).
  4. Pad: zeros to the canvas (mmdet's Pad pads masks with 0 to the 32-padded size; the canvas is larger
     or equal, and zero there too).
  5. Packed: uint8 [max_boxes, Hc, Wc // 8] = np.packbits(mask, axis=-1, bitorder='little') (`pack`,
     `unpack`); rows past the kept objects are zero.

Cost on the host (`canvas_masks`, tests/data/detection/test_masks.py::test_cost_per_coco_image): a 640 x 480
image with 20 polygons of 24 vertices into the (800, 1344) canvas, 100 rows, takes 67 ms on this 2-core AMD
EPYC (110-130 ms while others ran, load ~11): pycocotools' decoding ~1.6 ms per object, the element-wise
column gather ~1.7 ms per object at 1066 x 800; the row gather, the packing and the zeroed [100, 800, 168]
output ~5 ms. An image without objects costs ~0.1 ms. It runs inside tf.data's parallel map
(tf.numpy_function, so under Python's GIL except where numpy releases it).

Errors name what is wrong and how to fix it (`MaskError`, a ValueError): an object without a segmentation,
unreadable JSON, an RLE whose size is not the image's or whose counts do not cover it. pycocotools is
imported when a mask is decoded (the `train` extra).
"""
import json

import numpy as np


class MaskError(ValueError):
  """A segmentation that cannot become an instance mask (the message names the object and the fix)."""


_FIX = ('config.data.with_masks=True needs every kept object\'s polygons or RLE: prepare the dataset from an '
        'annotation file with segmentations (COCO instances_*.json), or set config.data.with_masks=False')


def _text(x):
  return x.decode('utf-8') if isinstance(x, (bytes, np.bytes_)) else str(x)


def _object_name(image_id, index, ann_id):
  return f'image_id {int(image_id)}, kept object {int(index)} (annotation id {int(ann_id)})'


def parse(segmentation, image_id=-1, index=0, ann_id=-1):
  """The segmentation of one object as stored (JSON text, `records`) -> its polygons (list) or RLE (dict)."""
  text = _text(segmentation) if not isinstance(segmentation, (list, dict)) else segmentation
  if isinstance(text, (list, dict)):
    return text
  if not text.strip():
    raise MaskError(f'{_object_name(image_id, index, ann_id)} has no segmentation (objects/segmentation is '
                    f"''); {_FIX}")
  try:
    value = json.loads(text)
  except ValueError as e:
    raise MaskError(f'{_object_name(image_id, index, ann_id)}: objects/segmentation is not JSON ({e}): '
                    f'{text[:60]!r}; prepare the dataset again') from None
  if not isinstance(value, (list, dict)):
    raise MaskError(f'{_object_name(image_id, index, ann_id)}: objects/segmentation is {type(value).__name__}, '
                    f'not a list of polygons or an RLE dict; {_FIX}')
  return value


def decode(segmentation, height, width, image_id=-1, index=0, ann_id=-1):
  """One object's mask at the original size as mmdet's LoadAnnotations(poly2mask=True):
  (uint8 [height, width] of 0/1, ignored: mmdet's _process_masks makes it an ignored instance)."""
  from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top
  seg = parse(segmentation, image_id, index, ann_id)
  name = _object_name(image_id, index, ann_id)
  if isinstance(seg, list):
    parts = []
    for p in seg:
      if not isinstance(p, list) or not all(isinstance(v, (int, float)) for v in p):
        raise MaskError(f'{name}: objects/segmentation is a list but not of polygons (lists of x, y numbers); '
                        f'{_FIX}')
      if len(p) % 2 == 0 and len(p) >= 6:
        parts.append(np.asarray(p, np.float64))
    if not parts:  # mmdet: ignore_flag = 1 and an empty mask
      return np.zeros((height, width), np.uint8), True
    rle = mask_utils.merge(mask_utils.frPyObjects(parts, height, width))
  else:
    counts, size = seg.get('counts'), seg.get('size')
    if counts is None or size is None or not isinstance(counts, (list, str)):
      return np.zeros((height, width), np.uint8), True  # mmdet: ignore_flag = 1 and an empty mask
    if [int(s) for s in size] != [int(height), int(width)]:
      raise MaskError(f'{name}: its RLE has size {list(size)} (h, w) but the image is {[height, width]}; fix the '
                      f'annotation (an RLE covers the whole image)')
    if isinstance(counts, list):
      if sum(int(c) for c in counts) != height * width:
        raise MaskError(f'{name}: its RLE counts add up to {sum(int(c) for c in counts)}, not {height} x {width} '
                        f'= {height * width} pixels; fix the annotation')
      rle = mask_utils.frPyObjects(seg, height, width)
    else:
      rle = {'size': [int(height), int(width)], 'counts': counts.encode('ascii')}
  try:
    return np.asarray(mask_utils.decode(rle), np.uint8), False
  except ValueError as e:  # a compressed RLE whose runs do not cover the image
    raise MaskError(f'{name}: its RLE does not decode ({e}); fix the annotation') from None


def nearest_sources(size_in, size_out):
  """int64 [size_out]: the source line of each output line under cv2.resize INTER_NEAREST (OpenCV's resizeNN:
  floor(d * (1 / (out / in))) in float64, clipped to in - 1; the reciprocal matters where d * in / out is whole)."""
  inv = 1.0 / (float(size_out) / float(size_in))
  src = np.floor(np.arange(size_out, dtype=np.float64) * inv).astype(np.int64)
  return np.minimum(src, size_in - 1)


def _columns(w, new_w, flip, padded_w=None):
  """Source column of each output column (mirrored if `flip`); columns new_w .. padded_w - 1 take column w."""
  cols = nearest_sources(w, new_w)
  cols = cols[::-1] if flip else cols
  return cols if padded_w is None else np.concatenate([cols, np.full([padded_w - new_w], w, np.int64)])


def rescale_nearest(masks, new_h, new_w, flip=False):
  """[n, h, w] -> [n, new_h, new_w] as cv2 INTER_NEAREST (mmcv.imrescale 'nearest'), mirrored if `flip`."""
  _, h, w = masks.shape
  # np.take on the columns first (the element-wise gather on the smaller array), then whole rows.
  return np.take(np.take(masks, _columns(w, new_w, flip), axis=2), nearest_sources(h, new_h), axis=1)


def pack(masks):
  """bool/0-1 [..., W] -> uint8 [..., ceil(W / 8)]: np.packbits little-endian along the width (zero-filled)."""
  masks = np.asarray(masks)
  masks = masks if masks.dtype == np.bool_ else masks != 0
  if masks.shape[-1] % 8:
    return np.packbits(masks, axis=-1, bitorder='little')
  # Whole rows of a multiple of 8 columns: one flat packbits (numpy's fast path; axis=-1 is ~100x slower).
  flat = np.packbits(np.ascontiguousarray(masks).reshape(-1), bitorder='little')
  return flat.reshape(masks.shape[:-1] + (masks.shape[-1] // 8,))


def unpack(packed, width=None):
  """uint8 [..., W // 8] -> bool [..., W] (`width`: keep only the first `width` columns)."""
  out = np.unpackbits(np.asarray(packed, np.uint8), axis=-1, bitorder='little').astype(bool)
  return out if width is None else out[..., :width]


def canvas_masks(segmentations, ann_ids, image_id, height, width, new_h, new_w, flip, canvas_h, canvas_w,
                 max_boxes):
  """The kept objects' masks through mmdet's train/test transforms, packed into the canvas.

  segmentations: [n] JSON texts (records' objects/segmentation of the kept objects, in order); ann_ids [n]
  their annotation ids (for error messages). Returns (uint8 [max_boxes, canvas_h, canvas_w // 8],
  ignored bool [n]: objects mmdet's _process_masks turns into ignored instances)."""
  n = len(segmentations)
  canvas_h, canvas_w, new_h, new_w = int(canvas_h), int(canvas_w), int(new_h), int(new_w)
  height, width = int(height), int(width)
  if canvas_w % 8:
    raise ValueError(f'canvas width {canvas_w} is not a multiple of 8 (the packed masks need it): make every '
                     f'config.data.canvases width a multiple of 8')
  if n > max_boxes:
    raise ValueError(f'image_id {int(image_id)} has {n} kept objects, more than config.data.max_boxes='
                     f'{max_boxes}; set config.data.max_boxes >= {n}')
  out = np.zeros((max_boxes, canvas_h, canvas_w // 8), np.uint8)
  ignored = np.zeros([n], bool)
  if n == 0:
    return out, ignored
  decoded = np.zeros((n, height, width + 1), np.uint8)  # + a zero column: the source of the width's padding
  for j in range(n):
    decoded[j, :, :width], ignored[j] = decode(segmentations[j], height, width, image_id, j, ann_ids[j])
  bytes_w = (new_w + 7) // 8
  cols = _columns(width, new_w, bool(flip), 8 * bytes_w)
  resized = np.take(np.take(decoded, cols, axis=2), nearest_sources(height, new_h), axis=1)
  out[:n, :new_h, :bytes_w] = pack(resized.view(bool))  # 0/1 bytes; 8 * bytes_w columns: pack's fast path
  return out, ignored
