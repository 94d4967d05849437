"""torchvision 0.28's CPU RoIAlign ('avg'), forward and backward, transcribed (own code) for the tests.

Why: torchvision's compiled ops do not load on this CPU torch (the PyPI wheel is the CUDA build; see
tests/structures/reference_nms.py), and mmcv-lite has no compiled `mmcv.ops.roi_align`. mmcv's CPU kernel
(mmcv/ops/csrc/pytorch/cpu/roi_align.cpp, 'avg' mode) and torchvision's
(torchvision/csrc/ops/cpu/roi_align_kernel.cpp + roi_align_common.h) are the same detectron2 code, so one
transcription stands for both.

What, step for step per RoI (rows of `rois` are (batch index, x1, y1, x2, y2)):
  offset = 0.5 if aligned else 0; start = coordinate * spatial_scale - offset; roi size = end - start
  (without `aligned`, at least 1); bin = size / pooled; grid = sampling_ratio if > 0 else ceil(size /
  pooled) per axis (adaptive: per RoI); count = max(grid_h * grid_w, 1);
  sample y = start_h + ph * bin_h + (iy + .5) * bin_h / grid_h (and x alike), in the input's float type;
  pre_calc: a sample with y < -1 or y > height (or x alike) has weights 0; y <= 0 becomes 0; y_low =
  int(y); if y_low >= height - 1 then y_low = y_high = height - 1 and y = y_low, else y_high = y_low + 1;
  ly = y - y_low, hy = 1 - ly; w1..w4 = hy*hx, hy*lx, ly*hx, ly*lx at (low, low), (low, high), (high, low),
  (high, high); output = sum over the bin's samples of w1*v1 + w2*v2 + w3*v3 + w4*v4, divided by count.
  Backward: each sample scatter-adds grad * w / count to its four pixels (none for an outside sample).
The sample coordinates and weights are computed in the input's float type with NumPy scalar-rounded
operations (float32 input: the kernel's float arithmetic, no fused multiply-add), so every border
decision (y < -1, y > height, int(y)) is the kernel's; the loops over samples are vectorised.
`accumulate`: 'kernel' sums the samples' values in the input's float type in the kernel's order (iy, then
ix; bit-equal for float32); 'float64' sums in float64 (a tighter reference for tolerances).
"""
import numpy as np
import torch


def _axis(lo, hi, scale, pooled, sampling_ratio, aligned, dtype):
  """(start, bin, grid) of one axis, as the kernel computes them in `dtype`."""
  offset = dtype.type(0.5 if aligned else 0.0)
  start = dtype.type(lo) * scale - offset
  end = dtype.type(hi) * scale - offset
  size = end - start
  if not aligned:
    size = max(size, dtype.type(1.0))
  bin_size = size / dtype.type(pooled)
  grid = sampling_ratio if sampling_ratio > 0 else int(np.ceil(size / dtype.type(pooled)))
  return start, bin_size, grid


def _samples(start, bin_size, grid, pooled, dtype):
  """[pooled, grid] sample coordinates: start + p * bin + (k + .5) * bin / grid, left to right."""
  p = np.arange(pooled, dtype=dtype)[:, None]
  k = np.arange(max(grid, 0), dtype=dtype)[None, :]
  return (start + p * bin_size) + ((k + dtype.type(0.5)) * bin_size) / dtype.type(grid)


def _bilinear(y, extent, dtype):
  """The kernel's border rules along one axis: (low, high, w_low, w_high, inside), all [...]."""
  inside = ~((y < -1.0) | (y > extent))
  y = np.where(y <= 0, dtype.type(0), y)
  low = y.astype(np.int64)  # (int)y: y >= 0 here
  clamp = low >= extent - 1
  low = np.where(clamp, extent - 1, low)
  high = np.where(clamp, extent - 1, low + 1)
  y = np.where(clamp, low.astype(dtype), y)
  ly = y - low.astype(dtype)
  hy = dtype.type(1.0) - ly
  return low, high, hy, ly, inside


def _pre_calc(roi, height, width, pooled_h, pooled_w, scale, sampling_ratio, aligned, dtype):
  """The kernel's pre_calc for one RoI: positions [4, ph, gh, pw, gw], weights alike, count."""
  scale = dtype.type(scale)
  sy, by, gy = _axis(roi[2], roi[4], scale, pooled_h, sampling_ratio, aligned, dtype)
  sx, bx, gx = _axis(roi[1], roi[3], scale, pooled_w, sampling_ratio, aligned, dtype)
  count = max(gy * gx, 1)
  ylo, yhi, hy, ly, yin = _bilinear(_samples(sy, by, gy, pooled_h, dtype), height, dtype)
  xlo, xhi, hx, lx, xin = _bilinear(_samples(sx, bx, gx, pooled_w, dtype), width, dtype)
  e = lambda a: a[:, :, None, None]  # [ph, gh] -> [ph, gh, 1, 1]
  f = lambda a: a[None, None, :, :]  # [pw, gw] -> [1, 1, pw, gw]
  inside = e(yin) & f(xin)
  pos = np.stack([e(ylo) * width + f(xlo), e(ylo) * width + f(xhi), e(yhi) * width + f(xlo),
                  e(yhi) * width + f(xhi)])
  w = np.stack([e(hy) * f(hx), e(hy) * f(lx), e(ly) * f(hx), e(ly) * f(lx)])
  pos = np.where(inside, pos, 0)
  w = np.where(inside, w, dtype.type(0))
  return pos, w, count


def roi_align_forward(features, rois, output_size, spatial_scale=1.0, sampling_ratio=0, aligned=True,
                      accumulate='kernel'):
  """[K, C, oh, ow] for features [N, C, H, W] and rois [K, 5] (NumPy arrays), the kernel's 'avg' mode."""
  features, rois = np.asarray(features), np.asarray(rois)
  dtype = features.dtype
  n, c, height, width = features.shape
  del n
  oh, ow = output_size
  acc = dtype if accumulate == 'kernel' else np.dtype(np.float64)
  out = np.zeros((len(rois), c, oh, ow), dtype)
  for r, roi in enumerate(rois.astype(dtype)):
    pos, w, count = _pre_calc(roi, height, width, oh, ow, spatial_scale, sampling_ratio, aligned, dtype)
    flat = features[int(roi[0])].reshape(c, height * width)
    # val = w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4 per sample: [C, ph, gh, pw, gw], left to right.
    val = (w[0].astype(acc) * flat[:, pos[0]].astype(acc) + w[1].astype(acc) * flat[:, pos[1]].astype(acc)) \
        + w[2].astype(acc) * flat[:, pos[2]].astype(acc)
    val = val + w[3].astype(acc) * flat[:, pos[3]].astype(acc)
    # output_val += val over iy (outer), ix (inner), sequentially as the kernel.
    val = val.transpose(0, 1, 3, 2, 4)  # [C, ph, pw, gh, gw]
    total = np.zeros(val.shape[:3], acc)
    for iy in range(val.shape[3]):
      for ix in range(val.shape[4]):
        total = total + val[..., iy, ix]
    out[r] = (total / acc.type(count)).astype(dtype)
  return out


def roi_align_backward(grad_output, rois, input_shape, spatial_scale=1.0, sampling_ratio=0, aligned=True):
  """d(features) [N, C, H, W] for grad_output [K, C, oh, ow]: the kernel's scatter-add, in float64."""
  grad_output, rois = np.asarray(grad_output), np.asarray(rois)
  dtype = grad_output.dtype
  n, c, height, width = input_shape
  oh, ow = grad_output.shape[2:]
  grad = np.zeros((n, c, height * width), np.float64)
  for r, roi in enumerate(rois.astype(dtype)):
    pos, w, count = _pre_calc(roi, height, width, oh, ow, spatial_scale, sampling_ratio, aligned, dtype)
    g = grad_output[r].astype(np.float64)[:, :, None, :, None] / count  # [C, ph, 1, pw, 1]
    for t in range(4):
      contrib = np.broadcast_to(g * w[t].astype(np.float64), (c,) + w[t].shape)
      idx = np.broadcast_to(pos[t], w[t].shape).reshape(-1)
      np.add.at(grad[int(roi[0])], (slice(None), idx), contrib.reshape(c, -1))
  return grad.reshape(n, c, height, width)


def torch_roi_align(input, rois, output_size, spatial_scale=1.0, sampling_ratio=0, pool_mode='avg',
                    aligned=True):  # pylint: disable=redefined-builtin
  """mmcv.ops.roi_align's signature on the transcription (forward only): what mmdet's mask_target calls."""
  if pool_mode != 'avg':
    raise ValueError(f"the transcription has 'avg' pooling only, got pool_mode={pool_mode!r}")
  output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
  out = roi_align_forward(input.detach().numpy(), rois.detach().numpy(), output_size, spatial_scale,
                          sampling_ratio, aligned)
  return torch.from_numpy(out)
