"""mmdet checkpoints -> Flax params: RetinaNet (retinanet_*) and Mask R-CNN (maskrcnn_*) on HAT-Net, the
detection half of `convert` (which re-exports `from_mmdet` and runs it for --task=detection).

Both are renames of mmdet 3.3.0's state-dict keys onto the Flax trees (backbone.* in the official HAT-Net
layout, as mmseg's), with three transforms beyond convert's conv / Linear ones: Mask R-CNN's first shared fc
(mmdet flattens its pooled RoIs NCHW, the Flax box head NHWC: the weight's input axis is permuted) and the mask
head's transposed conv (torch's ConvTranspose2d (in, out, kh, kw) -> flax ConvTranspose's (kh, kw, in, out),
spatially flipped: flax does not flip the kernel, torch's transposed conv does in effect).
"""
import functools

import numpy as np

from hatnet_jax import models
from hatnet_jax.models import mask_rcnn, retinanet
from hatnet_jax.models.heads import retina_head
from hatnet_jax.tools import convert as base


def nchw_flatten_fc(w: np.ndarray, channels: int, size: int) -> np.ndarray:
  """Linear (O, C*S*S) on an NCHW flatten -> Dense kernel (S*S*C, O) on an NHWC flatten of the same RoI. A
  weight of another width comes back merely transposed, so that the shape check reports it."""
  if w.ndim != 2 or w.shape[1] != channels * size * size:
    return np.transpose(w)
  return w.reshape(w.shape[0], channels, size, size).transpose(2, 3, 1, 0).reshape(-1, w.shape[0])


def linear(w: np.ndarray) -> np.ndarray:
  """nn.Linear weight (O, I) -> Dense kernel (I, O)."""
  return np.transpose(w)


def deconv(w: np.ndarray) -> np.ndarray:
  """ConvTranspose2d weight (in, out, kh, kw) -> flax ConvTranspose kernel (kh, kw, in, out), flipped in space."""
  return np.ascontiguousarray(np.transpose(w, (2, 3, 0, 1))[::-1, ::-1])


def _linear(table: base.Layout, torch_prefix: str, path: tuple[str, ...], transform=linear) -> None:
  table[torch_prefix + '.weight'] = ('params', path + ('kernel',), None, transform)
  table[torch_prefix + '.bias'] = ('params', path + ('bias',), None, base._same)


def _det_layout(net: models.RetinaNet) -> base.Layout:
  """mmdet RetinaNet (HAT-Net + FPN + RetinaHead) state-dict key -> where it goes in RetinaNet's params. Convs
  sit in ConvModules (`.conv.`) but retina_cls/reg; ModuleList indices are the Flax names' (FPN's as mmdet's)."""
  table = base._backbone_layout(net.variant)
  for i in range(len(net.variant.dims) - 1):  # FPN start_level=1
    base._conv_entry(table, f'neck.lateral_convs.{i}.conv', ('neck', f'lateral_convs_{i}'))
  for i in range(len(retinanet.STRIDES)):
    base._conv_entry(table, f'neck.fpn_convs.{i}.conv', ('neck', f'fpn_convs_{i}'))
  for branch in ('cls', 'reg'):
    for i in range(retina_head.RetinaHead.stacked_convs):
      base._conv_entry(table, f'bbox_head.{branch}_convs.{i}.conv', ('bbox_head', f'{branch}_convs_{i}'))
    base._conv_entry(table, f'bbox_head.retina_{branch}', ('bbox_head', f'retina_{branch}'))
  return table


def _mask_rcnn_layout(net: models.MaskRCNN) -> base.Layout:
  """mmdet MaskRCNN (HAT-Net + FPN + RPNHead + StandardRoIHead) state-dict key -> where it goes in MaskRCNN's
  params: the same nesting (roi_head.bbox_head -> roi_head/bbox_head), ModuleList index i -> name_i."""
  table = base._backbone_layout(net.variant)
  for i in range(len(net.variant.dims)):  # FPN start_level=0; P6 is a max-pool (no parameters)
    base._conv_entry(table, f'neck.lateral_convs.{i}.conv', ('neck', f'lateral_convs_{i}'))
    base._conv_entry(table, f'neck.fpn_convs.{i}.conv', ('neck', f'fpn_convs_{i}'))
  for name in ('rpn_conv', 'rpn_cls', 'rpn_reg'):  # plain Conv2d (num_convs=1), no ConvModule
    base._conv_entry(table, f'rpn_head.{name}', ('rpn_head', name))
  box, mask = ('roi_head', 'bbox_head'), ('roi_head', 'mask_head')
  first = functools.partial(nchw_flatten_fc, channels=net.neck_channels, size=mask_rcnn.BOX_ROI_SIZE)
  _linear(table, 'roi_head.bbox_head.shared_fcs.0', box + ('shared_fcs_0',), first)
  _linear(table, 'roi_head.bbox_head.shared_fcs.1', box + ('shared_fcs_1',))
  _linear(table, 'roi_head.bbox_head.fc_cls', box + ('fc_cls',))
  _linear(table, 'roi_head.bbox_head.fc_reg', box + ('fc_reg',))
  for i in range(4):  # FCNMaskHead num_convs
    base._conv_entry(table, f'roi_head.mask_head.convs.{i}.conv', mask + (f'convs_{i}',))
  _linear(table, 'roi_head.mask_head.upsample', mask + ('upsample',), deconv)
  base._conv_entry(table, 'roi_head.mask_head.conv_logits', mask + ('conv_logits',))
  return table


def layout(net) -> base.Layout:
  """The state-dict layout of a RetinaNet or MaskRCNN module."""
  return _mask_rcnn_layout(net) if isinstance(net, models.MaskRCNN) else _det_layout(net)


def from_mmdet(path_or_state_dict, model: str, num_classes: int | None = None, **overrides) -> dict:
  """An mmdet HAT-Net + RetinaNet or Mask R-CNN checkpoint -> {'params'} of `models.create(model, ...)` (no
  BatchNorm in either, so no batch_stats).

  model is a 'retinanet_*' or 'maskrcnn_*' name. Takes a .pth path (read with weights_only=True) or a state
  dict, plain or wrapped under "state_dict" as mmcv/mmengine save it. num_classes defaults to retina_cls's
  outputs over the anchors per position (RetinaNet) or fc_cls's outputs less the background (Mask R-CNN).
  backbone.* is in the official HAT-Net layout (its unused proj_norm is dropped), neck.* mmdet's FPN, the rest
  the model's heads. Anything else (another detector's heads, say) is an error naming the file, the model and
  every mismatch in one ValueError; a checkpoint of another variant names the variant its shapes fit.
  """
  cls = models.family(model)[1]
  if cls is models.RetinaNet:
    num_anchors = overrides.get('num_anchors', models.RetinaNet.num_anchors)
    classes_of = lambda state: _retina_classes(state, model, num_anchors)
  elif cls is models.MaskRCNN:
    classes_of = lambda state: _mask_rcnn_classes(state, model)
  else:
    raise ValueError(f'from_mmdet converts RetinaNet (retinanet_*) and Mask R-CNN (maskrcnn_*) models; '
                     f'got {model!r}')
  return base._convert(path_or_state_dict, _variables, classes_of, model, num_classes, overrides)


def _heads(state) -> list[str]:
  return sorted({k.split('.')[0] for k in state} - {'backbone', 'neck'})


def _retina_classes(state, model: str, num_anchors: int) -> int:
  """retina_cls's outputs / anchors per position; a ValueError naming the heads found if there is none."""
  w = state.get('bbox_head.retina_cls.weight')
  if w is None:
    raise ValueError(f'not an mmdet RetinaNet checkpoint: {model} needs bbox_head.retina_cls and retina_reg, '
                     f'but there is no bbox_head.retina_cls.weight (heads found: {_heads(state) or "none"}; '
                     "rpn_head and roi_head are a Faster or Mask R-CNN's: a Mask R-CNN converts with a "
                     'maskrcnn_* model)')
  if w.shape[0] % num_anchors:
    raise ValueError(f'bbox_head.retina_cls has {w.shape[0]} outputs, not a multiple of num_anchors='
                     f'{num_anchors} ({model}: classes x anchors per position)')
  return w.shape[0] // num_anchors


def _mask_rcnn_classes(state, model: str) -> int:
  """fc_cls's outputs less the background; a ValueError naming the heads found if there is none."""
  w = state.get('roi_head.bbox_head.fc_cls.weight')
  if w is None:
    raise ValueError(f'not an mmdet Mask R-CNN checkpoint: {model} needs rpn_head and roi_head (bbox_head, '
                     f'mask_head), but there is no roi_head.bbox_head.fc_cls.weight (heads found: '
                     f'{_heads(state) or "none"}; a bbox_head alone is a RetinaNet\'s: it converts with a '
                     'retinanet_* model)')
  if w.shape[0] < 2:
    raise ValueError(f'roi_head.bbox_head.fc_cls has {w.shape[0]} outputs; {model} needs num_classes + 1 >= 2 '
                     '(the classes and the background)')
  return w.shape[0] - 1


def _variables(state, model, num_classes, **overrides):
  net, expected = base._expected(model, num_classes, overrides)
  return base._fill(state, layout(net), expected, lambda k: k.startswith('backbone.') and k.endswith(base._UNUSED),
                    f'{model} (num_classes={num_classes})')
