"""Host-side detection transforms in TF ops: mmdet 3.3.0's RetinaNet 1x pipeline (PVT's COCO recipe).

Train (`DetTransform(train=True)`), mmdet's order:
  1. LoadImageFromFile: the stored bytes decoded to RGB uint8 (accurate IDCT, as OpenCV). EXIF orientation is
     not applied (mmcv's cv2 'color' decode applies it): the annotations are on the stored pixel grid, whose
     size the COCO builder checks against the annotation file.
  2. LoadAnnotations(with_bbox=True): the objects mmdet keeps (records' ``kept``) in the file's order; crowd
     boxes stay as ignored instances (``crowd``, never a target).
  3. Resize(scale=(1333, 800), keep_ratio=True): mmcv `rescale_size`: s = min(1333 / long side, 800 / short
     side), new size (int(w s + 0.5), int(h s + 0.5)); bilinear as cv2 (`seg_transforms.resize_bilinear`);
     scale_factor = (new_w / w, new_h / h) (not s); boxes x scale_factor in float32, then clipped to the
     resized image (clip_object_border=True).
  4. RandomFlip(prob=0.5, horizontal): image mirrored, boxes (w - x2, y1, w - x1, y2) with w the resized width.
  5. Normalize (mean/std of config.data on [0, 1] pixels) and Pad (size_divisor 32, value 0 after
     normalisation): on the device (`pipeline`); the host pads the uint8 image with 0 into the batch's fixed
     canvas (`canvas_index`: the first of config.data.canvases that holds the 32-padded resized size).
Eval (`train=False`): the same without the flip.

Instance masks (`with_masks=True`, Mask R-CNN: mmdet's LoadAnnotations(with_mask=True, poly2mask=True) and
the same Resize / RandomFlip / Pad on gt_masks): `masks.canvas_masks` in a tf.numpy_function decodes each
kept object's polygons / RLE with pycocotools, resizes it as cv2 INTER_NEAREST, flips it with the image,
zero-pads it to the canvas and bit-packs it: ``masks`` uint8 [M, H, W // 8]. An object mmdet's
_process_masks ignores (no polygon of >= 6 coordinates left, a malformed RLE dict) becomes a crowd box.

Objects are padded to config.data.max_boxes rows (boxes 0, labels -1, box_valid and crowd False). Every
float box operation is mmdet's float32 arithmetic in the same order, so boxes match it exactly.
"""
import math

import numpy as np

from hatnet_jax.data.decode import decode_image
from hatnet_jax.data.detection import masks as det_masks
from hatnet_jax.data.detection import records
from hatnet_jax.data.segmentation import transforms as seg_transforms
from hatnet_jax.data.tf_host import tf

_KEYS = ['image', 'image_id', 'height', 'width', 'objects/bbox', 'objects/label', 'objects/is_crowd',
         'objects/kept']
_MASK_KEYS = ['objects/segmentation', 'objects/id']


def resized_size(h, w, scale):
  """mmcv `rescale_size` with a (long, short) `scale`: (new_h, new_w) of an h x w image."""
  return seg_transforms.rescale_size(h, w, scale)


def padded_size(h, w, scale, size_divisor):
  """The resized size rounded up to multiples of `size_divisor` (mmdet's Pad / batch padding)."""
  nh, nw = resized_size(h, w, scale)
  return (int(math.ceil(nh / size_divisor)) * size_divisor, int(math.ceil(nw / size_divisor)) * size_divisor)


def check_canvases(canvases, size_divisor):
  canvases = tuple((int(h), int(w)) for h, w in canvases)
  if not canvases or any(h <= 0 or w <= 0 or h % size_divisor or w % size_divisor for h, w in canvases):
    raise ValueError(f'config.data.canvases={canvases} must be a non-empty tuple of (H, W), each a positive '
                     f'multiple of config.data.size_divisor={size_divisor}')
  return canvases


def canvas_index(heights, widths, scale, canvases, size_divisor):
  """int64 [N]: the first canvas holding each image's 32-padded resized size, -1 where none does."""
  out = np.full(len(heights), -1, np.int64)
  for i, (h, w) in enumerate(zip(np.asarray(heights).tolist(), np.asarray(widths).tolist())):
    ph, pw = padded_size(h, w, scale, size_divisor)
    for c, (ch, cw) in enumerate(canvases):
      if ph <= ch and pw <= cw:
        out[i] = c
        break
  return out


def pad_objects(x, max_boxes, value):
  """[n, ...] -> [max_boxes, ...] padded with `value`; n <= max_boxes is checked by the pipeline beforehand."""
  n = tf.shape(x)[0]
  tf.debugging.assert_less_equal(n, max_boxes, message=f'more objects than config.data.max_boxes={max_boxes}')
  pad = [[0, max_boxes - n]] + [[0, 0]] * (len(x.shape) - 1)
  out = tf.pad(x, pad, constant_values=value)
  out.set_shape([max_boxes] + x.shape.as_list()[1:])
  return out


def scale_boxes(boxes, h, w, nh, nw):
  """mmdet Resize on boxes: x (new_w / w, new_h / h) as float32, then clipped to [0, new_w] x [0, new_h].
  Returns (boxes, scale_factor (sx, sy) float32)."""
  sx = tf.cast(tf.cast(nw, tf.float64) / tf.cast(w, tf.float64), tf.float32)
  sy = tf.cast(tf.cast(nh, tf.float64) / tf.cast(h, tf.float64), tf.float32)
  boxes = boxes * tf.stack([sx, sy, sx, sy])
  fw, fh = tf.cast(nw, tf.float32), tf.cast(nh, tf.float32)
  boxes = tf.stack([tf.clip_by_value(boxes[:, 0], 0.0, fw), tf.clip_by_value(boxes[:, 1], 0.0, fh),
                    tf.clip_by_value(boxes[:, 2], 0.0, fw), tf.clip_by_value(boxes[:, 3], 0.0, fh)], axis=1)
  return boxes, (sx, sy)


def flip_boxes(boxes, nw):
  """mmdet HorizontalBoxes.flip_ ('horizontal'): (w - x2, y1, w - x1, y2)."""
  fw = tf.cast(nw, tf.float32)
  return tf.stack([fw - boxes[:, 2], boxes[:, 1], fw - boxes[:, 0], boxes[:, 3]], axis=1)


class DetTransform:
  """(serialized record, seed [2] int64, canvas (H, W) int32) -> dict(image uint8 [H, W, 3] zero-padded,
  boxes f32 [M, 4], labels int32 [M], box_valid bool [M], crowd bool [M], image_size int32 [2] (resized h, w),
  scale f32 [2] (sy, sx), orig_size int32 [2], image_id int32); with `with_masks` also masks uint8
  [M, H, W // 8] (`masks.canvas_masks`)."""

  def __init__(self, d, train, with_masks=False):
    self.scale = tuple(int(x) for x in d.scale)
    self.hflip_prob = float(d.hflip_prob) if train else 0.0
    self.max_boxes = int(d.max_boxes)
    self.with_masks = bool(with_masks)

  def _masks(self, ex, keep, h, w, nh, nw, flip, canvas_hw):
    """(packed masks uint8 [M, Hc, Wc // 8], ignored bool [n kept]) through `masks.canvas_masks`."""
    m = self.max_boxes
    fn = lambda *args: det_masks.canvas_masks(*args, max_boxes=m)
    packed, ignored = tf.numpy_function(
        fn, [tf.boolean_mask(ex['objects/segmentation'], keep), tf.boolean_mask(ex['objects/id'], keep),
             ex['image_id'], h, w, nh, nw, flip, canvas_hw[0], canvas_hw[1]], [tf.uint8, tf.bool], stateful=False)
    packed.set_shape([m, None, None])
    ignored.set_shape([None])
    return packed, ignored

  def __call__(self, serialized, seed, canvas_hw):
    ex = records.parse(serialized, _KEYS + (_MASK_KEYS if self.with_masks else []))
    img = decode_image(ex['image'])
    shape = tf.shape(img)
    h, w = shape[0], shape[1]
    nh, nw = seg_transforms.tf_rescale_size(h, w, max(self.scale), min(self.scale))
    img = seg_transforms.resize_bilinear(img, nh, nw)
    keep = ex['objects/kept']
    boxes, (sx, sy) = scale_boxes(tf.boolean_mask(ex['objects/bbox'], keep), h, w, nh, nw)
    labels = tf.cast(tf.boolean_mask(ex['objects/label'], keep), tf.int32)
    crowd = tf.boolean_mask(ex['objects/is_crowd'], keep)
    flip = tf.constant(False)
    if self.hflip_prob > 0:
      flip = tf.random.stateless_uniform([], seed, dtype=tf.float32) < self.hflip_prob
      img = tf.cond(flip, lambda: tf.reverse(img, [1]), lambda: img)
      boxes = tf.cond(flip, lambda: flip_boxes(boxes, nw), lambda: boxes)
    img = tf.pad(img, [[0, canvas_hw[0] - nh], [0, canvas_hw[1] - nw], [0, 0]], constant_values=0)
    m = self.max_boxes
    if self.with_masks:
      packed, ignored = self._masks(ex, keep, h, w, nh, nw, flip, canvas_hw)
      crowd = tf.logical_or(crowd, ignored)  # mmdet's ignore_flag for an object without a usable mask
    out = dict(
        image=img,
        boxes=pad_objects(boxes, m, 0.0),
        labels=pad_objects(labels, m, -1),
        box_valid=pad_objects(tf.logical_not(crowd), m, False),
        crowd=pad_objects(crowd, m, False),
        image_size=tf.stack([nh, nw]),
        scale=tf.stack([sy, sx]),
        orig_size=tf.stack([h, w]),
        image_id=tf.cast(ex['image_id'], tf.int32))
    if self.with_masks:
      out['masks'] = packed
    return out
