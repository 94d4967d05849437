"""Mask R-CNN's mask paste: each detection's M x M mask probabilities resampled into its box on the original
image and thresholded, as mmdet 3.3.0's FCNMaskHead._predict_by_feat_single with rescale=True.

Host-side NumPy, not JAX: the output is sized by each image's original size, which varies per image (a jitted
version would need a fixed canvas and a crop), and it runs once per evaluation image on at most 100
detections, after the device has produced the fixed-size [D, M, M] probabilities and boxes.
"""
from typing import Tuple

import numpy as np


def _fma(a: np.ndarray, b, c) -> np.ndarray:
  """float32 a * b + c rounded once, as the fused multiply-add that PyTorch's AVX2 kernel compiles to (the
  float64 product of two float32 numbers is exact; the sum is rounded to float64 then float32)."""
  return (a.astype(np.float64) * b + c).astype(np.float32)


def _axis(lo: np.ndarray, hi: np.ndarray, size: int, m: int):
  """One axis of grid_sample for every detection: the first tap int64 [N, size], its fraction float32
  [N, size] and the NaN pixels bool [N, size].

  Pixel centres i + 0.5 go to the normalised coordinate (i + 0.5 - lo) / (hi - lo) * 2 - 1 (separate float32
  operations, as mmdet writes them) and to the source position (g + 1) * (m / 2) - 0.5 (align_corners=False,
  fused as PyTorch's CPU kernel computes it). A zero-size box gives +-inf, which mmdet sets to 0 (the mask's
  centre line then spans the whole image); 0 / 0 gives NaN, which grid_sample never sets above a threshold.
  """
  f32 = np.float32
  centres = np.arange(size, dtype=f32) + f32(0.5)
  with np.errstate(divide='ignore', invalid='ignore'):
    g = (centres[None, :] - lo[:, None]) / (hi - lo)[:, None] * f32(2) - f32(1)
  g[np.isinf(g)] = 0
  nan = np.isnan(g)
  g[nan] = -4  # reads padding only; forced False by the caller
  pos = _fma(g + f32(1), f32(m / 2), f32(-0.5))
  first = np.floor(pos)
  return first.astype(np.int64), pos - first, nan


def _extent(first: np.ndarray, m: int) -> Tuple[np.ndarray, np.ndarray]:
  """Per detection, the first and one-past-last pixel with a tap inside 0..m-1 (0, 0 when none): every
  other pixel reads only zero padding. Positions are monotone in the pixel, so the pixels between are in."""
  touched = (first >= -1) & (first <= m - 1)
  start = np.argmax(touched, axis=1)
  stop = touched.shape[1] - np.argmax(touched[:, ::-1], axis=1)
  empty = ~touched.any(axis=1)
  start[empty], stop[empty] = 0, 0
  return start, stop


def _sample(padded: np.ndarray, fy, fraction_y, fx, fraction_x) -> np.ndarray:
  """Bilinear samples float32 [len(fy), len(fx)] of one mask (zero-padded by one on each side) in PyTorch's
  CPU order: weights nw = s * e, ne = s * w, sw = n * e, se = n * w, then one FMA chain from nw_val * nw."""
  f32 = np.float32
  m = padded.shape[0] - 2
  fy, fx = np.clip(fy, -1, m - 1) + 1, np.clip(fx, -1, m - 1) + 1
  n, w = fraction_y[:, None], fraction_x[None, :]
  s, e = f32(1) - n, f32(1) - w
  top, bottom = padded[fy], padded[fy + 1]
  out = top[:, fx] * (s * e)
  out = _fma(top[:, fx + 1], s * w, out)
  out = _fma(bottom[:, fx], n * e, out)
  return _fma(bottom[:, fx + 1], n * w, out)


def paste_masks(mask_probs, boxes, image_hw: Tuple[int, int], threshold: float = 0.5) -> np.ndarray:
  """bool [N, h, w]: mask_probs [N, M, M] (probabilities, after the sigmoid and the class pick) pasted into
  boxes [N, 4] (xyxy in original-image pixels, i.e. already divided by the scale factor) on an image of
  image_hw = (h, w), then `>= threshold` (mmdet's mask_thr_binary, 0.5).

  Equal to mmdet's _do_paste_mask as it runs on GPU (skip_empty=False: every pixel of the image is sampled,
  grid_sample bilinear, align_corners=False, zero padding), bit for bit as PyTorch's CPU grid_sample (AVX2,
  with its fused multiply-adds) computes those values. Each detection is sampled only over the rows and
  columns whose taps reach the mask (every other pixel reads only padding: 0), four taps per pixel, in float32
  in PyTorch's order. Not the separable Wy @ mask @ Wx^T: that is faster but rounds differently and flips the
  rare pixels whose value lies within an ulp of the threshold (one pixel in the tests' random cases). The CUDA
  kernel that produced the published numbers orders its float32 arithmetic differently again, so it can
  differ from this on such pixels only.

  mmdet on CPU pastes each mask with skip_empty=True, only inside the box's integer extent (floor(x1) - 1 to
  ceil(x2) + 1); outside it the GPU path gives values below 0.5 for any box of positive size (a pixel whose
  centre lies outside the box reads at most half of one mask pixel), so at threshold 0.5 the two agree on
  every pixel of such boxes (tests/structures/test_mask_paste.py counts 0 differing pixels on random cases).
  They differ for boxes of zero width or height, where the GPU path paints the mask's centre line across the
  whole image and the CPU path only within one pixel of the box, and at thresholds below 0.5.
  """
  probs = np.asarray(mask_probs, np.float32)
  boxes = np.asarray(boxes, np.float32)
  if probs.ndim != 3 or boxes.shape != (probs.shape[0], 4):
    raise ValueError(f'paste_masks: expected mask_probs [N, M, M] and boxes [N, 4] with the same N; got '
                     f'{probs.shape} and {boxes.shape}')
  h, w = (int(s) for s in image_hw)
  if h <= 0 or w <= 0:
    raise ValueError(f'paste_masks: image_hw must be a positive (height, width); got {tuple(image_hw)}')
  if not threshold >= 0:
    raise ValueError(f'paste_masks: threshold must be >= 0 (mmdet\'s negative threshold gives uint8 '
                     f'visualisation masks, not supported); got {threshold}')
  n, mh, mw = probs.shape
  out = np.zeros((n, h, w), bool)
  if n == 0:
    return out
  fy, ny, nan_y = _axis(boxes[:, 1], boxes[:, 3], h, mh)
  fx, nx, nan_x = _axis(boxes[:, 0], boxes[:, 2], w, mw)
  y0, y1 = _extent(fy, mh)
  x0, x1 = _extent(fx, mw)
  padded = np.pad(probs, ((0, 0), (1, 1), (1, 1)))
  for k in range(n):
    if y1[k] > y0[k] and x1[k] > x0[k]:
      rows, cols = slice(y0[k], y1[k]), slice(x0[k], x1[k])
      out[k, rows, cols] = _sample(padded[k], fy[k, rows], ny[k, rows], fx[k, cols], nx[k, cols]) >= threshold
  if threshold == 0:  # every sampled pixel passes 0 except grid_sample's NaN ones
    out[:] = True
  out &= ~nan_y[:, :, None]
  out &= ~nan_x[:, None, :]
  return out
