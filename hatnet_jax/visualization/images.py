"""Pictures from arrays, for TensorBoard and the tools: normalised images back to pixels, class colours and
input | truth | prediction panels for segmentation, a heat-map colormap and overlays."""
from typing import Sequence

import numpy as np


def images_for_display(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """Normalised NHWC float images back to uint8 RGB."""
  images = np.asarray(images, np.float32) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
  return (np.clip(images, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


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


def label_palette(num_classes: int) -> np.ndarray:
  """uint8 [num_classes + 1, 3]: a fixed distinct colour per class, black for the ignored label (last)."""
  rng = np.random.default_rng(0)
  colours = rng.integers(40, 256, size=(num_classes, 3)).astype(np.uint8)
  return np.concatenate([colours, np.zeros((1, 3), np.uint8)])


def segmentation_panels(images, labels, preds, sizes, mean, std, ignore_index: int) -> np.ndarray:
  """uint8 [N, H, 3W, 3]: input | ground truth | prediction, colour-coded per class, at the label size.

  `images` are normalised at their aligned size; they are shown resized (nearest) to the label size.
  """
  num_classes = int(max(np.max(np.where(labels == ignore_index, 0, labels)), np.max(preds))) + 1
  palette = label_palette(max(num_classes, 1))
  shown = images_for_display(images, mean, std)
  h, w = labels.shape[1:3]
  out = []
  for img, lab, pred, (oh, ow) in zip(shown, labels, preds, sizes):
    rows = np.minimum((np.arange(h) * img.shape[0] / max(int(oh), 1)).astype(int), img.shape[0] - 1)
    cols = np.minimum((np.arange(w) * img.shape[1] / max(int(ow), 1)).astype(int), img.shape[1] - 1)
    lab = np.where(lab == ignore_index, len(palette) - 1, np.minimum(lab, len(palette) - 2))
    outside = (np.arange(h)[:, None] >= oh) | (np.arange(w)[None, :] >= ow)
    panel = [img[rows][:, cols], palette[lab], palette[np.minimum(pred, len(palette) - 2)]]
    out.append(np.concatenate([np.where(outside[..., None], 0, p) for p in panel], axis=1))
  return np.stack(out)
