"""torchvision 0.28's NMS, transcribed (own code) for machines where its compiled ops do not load.

Why: the torchvision 0.28.0 wheel on PyPI for Linux x86_64 is the CUDA 13 build (`0.28.0+cu130`); on the
CPU torch of requirements.txt (2.13.0+cpu) its `_C.so` needs libc10_cuda.so, so `import torchvision`
fails ("operator torchvision::nms does not exist"). The NMS tests then compare with this transcription;
with a working torchvision they compare with torchvision itself too (`tests/structures/conftest.py`).

What: `nms` is the CPU kernel (torchvision/csrc/ops/cpu/nms_kernel.cpp) step for step: float32 areas
(x2 - x1) * (y2 - y1), order from torch's (unstable) `scores.sort(0, descending=True)` -- the same ATen
call, so ties come out in the kernel's order --, then for each box not yet suppressed, in that order:
keep it and suppress every later unsuppressed box whose float32 `inter / (area_i + area_j - inter)` is
greater than the threshold as a double. The inner loop is vectorised with NumPy float32 operations, which
round like the kernel's scalar ones. `batched_nms` is torchvision.ops.batched_nms: the coordinate-trick
path (boxes offset by label * (max + 1), one NMS) up to 4000 box coordinates on CPU, otherwise NMS per
label and a final (unstable) descending sort of the kept scores.
"""
import numpy as np
import torch


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
  if boxes.numel() == 0:
    return torch.empty((0,), dtype=torch.int64)
  x1, y1, x2, y2 = (boxes[:, k].contiguous().numpy() for k in range(4))
  areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).numpy()
  order = scores.sort(0, descending=True)[1].numpy()
  suppressed = np.zeros(len(order), bool)
  keep = []
  zero = np.zeros((), x1.dtype)
  for pos, i in enumerate(order):
    if suppressed[i]:
      continue
    keep.append(i)
    later = order[pos + 1:]
    later = later[~suppressed[later]]
    w = np.maximum(zero, np.minimum(x2[i], x2[later]) - np.maximum(x1[i], x1[later]))
    h = np.maximum(zero, np.minimum(y2[i], y2[later]) - np.maximum(y1[i], y1[later]))
    inter = w * h
    with np.errstate(invalid='ignore', divide='ignore'):
      ovr = inter / (areas[i] + areas[later] - inter)
    suppressed[later[ovr.astype(np.float64) > iou_threshold]] = True  # float promoted to double, as in C++
  return torch.tensor(keep, dtype=torch.int64)


def coordinate_trick(boxes, scores, idxs, iou_threshold):
  """torchvision's `_batched_nms_coordinate_trick` (and mmcv's batched_nms below its split_thr)."""
  if boxes.numel() == 0:
    return torch.empty((0,), dtype=torch.int64)
  offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
  return nms(boxes + offsets[:, None], scores, iou_threshold)


def batched_nms(boxes, scores, idxs, iou_threshold):
  """torchvision.ops.batched_nms on CPU."""
  if boxes.numel() <= 4000:
    return coordinate_trick(boxes, scores, idxs, iou_threshold)
  keep_mask = torch.zeros_like(scores, dtype=torch.bool)
  for label in torch.unique(idxs):
    members = torch.where(idxs == label)[0]
    keep_mask[members[nms(boxes[members], scores[members], iou_threshold)]] = True
  kept = torch.where(keep_mask)[0]
  return kept[scores[kept].sort(descending=True)[1]]
