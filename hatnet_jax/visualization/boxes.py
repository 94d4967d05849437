"""Detection pictures: class-coloured boxes with "name score" tags on an image, and ground truth |
prediction panels for TensorBoard and the tools. NumPy and Pillow (its default bitmap font)."""
import functools
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hatnet_jax.visualization.images import images_for_display, label_palette

# Below this short side the ~11 px tags would hide the boxes: draw the boxes only.
MIN_TEXT_SIDE = 64
# Above it, the tags are scaled up by whole multiples (nearest) so they stay readable in large pictures.
TEXT_SCALE_SIDE = 400


@functools.lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont:
  return ImageFont.load_default_imagefont()


def _pixel_box(box, height: int, width: int):
  """Inclusive (left, top, right, bottom) pixels of an xyxy box (the pixels whose centres lie in
  [x1, x2) x [y1, y2), at least one), clipped to the image; None if not finite or wholly outside."""
  box = np.asarray(box, np.float64)
  if not np.all(np.isfinite(box)):
    return None
  left, top, right, bottom = (int(np.floor(v + 0.5)) for v in box)
  right, bottom = max(right - 1, left), max(bottom - 1, top)
  if right < 0 or bottom < 0 or left > width - 1 or top > height - 1:
    return None
  return max(left, 0), max(top, 0), min(right, width - 1), min(bottom, height - 1)


def _tag(text: str, colour, scale: int) -> Image.Image:
  """The text on a box-coloured background, in black or white (whichever reads better on the colour)."""
  _, _, tw, th = _font().getbbox(text)
  tag = Image.new('RGB', (tw + 2, th + 2), tuple(int(c) for c in colour))
  ink = (0, 0, 0) if np.dot(colour, (0.299, 0.587, 0.114)) >= 128 else (255, 255, 255)
  ImageDraw.Draw(tag).text((1, 1), text, fill=ink, font=_font())
  return tag.resize((tag.width * scale, tag.height * scale), Image.NEAREST) if scale > 1 else tag


def draw_boxes(image, boxes, labels, scores, class_names: Sequence[str], valid=None, colors=None, *,
               line_width: int | None = None, text: bool = True) -> np.ndarray:
  """uint8 [H, W, 3]: `image` with a class-coloured rectangle per valid box and a "name 0.87" tag
  ("name" when `scores` is None) above its top-left corner (inside, where there is no room above).

  boxes [n, 4] xyxy in the image's pixels (partly outside: clipped; wholly outside or not finite: skipped);
  labels [n] contiguous; valid [n] (None: all); colors [K, 3] (None: `label_palette`). The outline covers
  the pixels whose centres lie in the box, `line_width` pixels inwards (None: 1 per 300 px of the short
  side). Tags are left out on images under MIN_TEXT_SIDE px and when `text` is False.
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f'draw_boxes: image must be uint8 [H, W, 3]; got {image.dtype} {image.shape}')
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  labels = np.asarray(labels).reshape(-1).astype(np.int64)
  valid = np.ones(len(boxes), bool) if valid is None else np.asarray(valid).reshape(-1).astype(bool)
  if scores is not None:
    scores = np.asarray(scores, np.float64).reshape(-1)
  if len(labels) != len(boxes) or len(valid) != len(boxes) or (scores is not None and len(scores) != len(boxes)):
    raise ValueError(f'draw_boxes: {len(boxes)} boxes but {len(labels)} labels, {len(valid)} valid flags'
                     + ('' if scores is None else f', {len(scores)} scores') + '; give one per box')
  colors = label_palette(max(len(class_names), 1))[:-1] if colors is None else np.asarray(colors, np.uint8)
  height, width = image.shape[:2]
  line_width = max(1, round(min(height, width) / 300)) if line_width is None else int(line_width)
  scale = max(1, min(height, width) // TEXT_SCALE_SIDE)
  pil = Image.fromarray(image)
  draw = ImageDraw.Draw(pil)
  tags = []
  for i in np.flatnonzero(valid):
    corners = _pixel_box(boxes[i], height, width)
    if corners is None:
      continue
    colour = colors[labels[i] % len(colors)]
    draw.rectangle(corners, outline=tuple(int(c) for c in colour), width=line_width)
    if text and min(height, width) >= MIN_TEXT_SIDE:
      name = class_names[labels[i]] if 0 <= labels[i] < len(class_names) else str(labels[i])
      tags.append((corners, _tag(name if scores is None else f'{name} {scores[i]:.2f}', colour, scale)))
  for (left, top, _, _), tag in tags:  # after every rectangle, so no outline crosses a tag
    if tag.width > width or tag.height > height:
      continue
    y = top - tag.height if top >= tag.height else top
    pil.paste(tag, (min(left, width - tag.width), y))
  return np.asarray(pil)


def overlay_masks(image: np.ndarray, masks, keep, colors, alpha: float = 0.45) -> np.ndarray:
  """uint8 [h, w, 3] with each kept instance mask [N, >= h, >= w] blended in its own colour (instance i takes
  colors[i % len(colors)], so that neighbours of one class stay apart)."""
  out = image.astype(np.float32)
  h, w = image.shape[:2]
  for i in np.flatnonzero(np.asarray(keep, bool)):
    m = np.asarray(masks[i], bool)[:h, :w]
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(colors[i % len(colors)], np.float32)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def detection_panels(images, mean: Sequence[float], std: Sequence[float], sizes, gt, pred,
                     class_names: Sequence[str], score_threshold: float = 0.3, gt_masks=None,
                     pred_masks=None) -> np.ndarray:
  """uint8 [B, H', 2 W', 3]: ground truth | prediction, each image cropped to its valid extent and padded
  (black, bottom and right) to the batch's largest extent H' x W'.

  images: normalised float [B, H, W, 3]; sizes [B, 2] the valid (h, w) of each; gt = (boxes [B, G, 4],
  labels [B, G], valid [B, G]); pred = (boxes [B, D, 4], labels, scores, valid [B, D]); boxes xyxy in the
  pixels of `images`. Predictions scoring under `score_threshold` are not drawn. Instance segmentation adds
  gt_masks [B, G, H, W] / pred_masks [B, D, H, W] (bool, on the pixels of `images`), blended under the boxes.
  """
  shown = images_for_display(images, mean, std)
  sizes = np.minimum(np.asarray(sizes, np.int64).reshape(-1, 2), shown.shape[1:3])
  if len(sizes) != len(shown) or np.any(sizes < 1):
    raise ValueError(f'detection_panels: sizes must be [B, 2] positive (h, w), one per image ({len(shown)}); '
                     f'got {np.asarray(sizes).tolist()}')
  gt_boxes, gt_labels, gt_valid = gt
  pr_boxes, pr_labels, pr_scores, pr_valid = pred
  colors = label_palette(max(len(class_names), 1))[:-1]
  out_h, out_w = (int(s) for s in sizes.max(axis=0))
  out = np.zeros((len(shown), out_h, 2 * out_w, 3), np.uint8)
  for i, (h, w) in enumerate(sizes):
    crop = np.ascontiguousarray(shown[i, :h, :w])
    keep = np.asarray(pr_valid[i], bool) & (np.asarray(pr_scores[i]) >= score_threshold)
    gt_crop = crop if gt_masks is None else overlay_masks(crop, gt_masks[i], gt_valid[i], colors)
    pr_crop = crop if pred_masks is None else overlay_masks(crop, pred_masks[i], keep, colors)
    out[i, :h, :w] = draw_boxes(gt_crop, gt_boxes[i], gt_labels[i], None, class_names, gt_valid[i], colors)
    out[i, :h, out_w:out_w + w] = draw_boxes(pr_crop, pr_boxes[i], pr_labels[i], pr_scores[i], class_names, keep,
                                             colors)
  return out
