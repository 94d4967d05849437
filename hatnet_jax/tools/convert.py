"""Official PyTorch HAT-Net weights (HAT-Net_Tiny.pth ...) -> Flax params, mmseg Semantic FPN checkpoints ->
Flax params + batch_stats, mmdet RetinaNet and Mask R-CNN checkpoints -> Flax params (`convert_mmdet.py`), and
a command line that writes any of them as an orbax checkpoint the trainer can start from (`config.init_from`).

    python -m hatnet_jax.tools.convert --model=hatnet_tiny --input=HAT-Net_Tiny.pth --output=DIR
    python -m hatnet_jax.tools.convert --task=segmentation --model=semfpn_hatnet_tiny --input=fpn.pth --output=DIR
    python -m hatnet_jax.tools.convert --task=detection --model=retinanet_hatnet_tiny --input=retina.pth --output=DIR
    python -m hatnet_jax.tools.convert --task=detection --model=maskrcnn_hatnet_tiny --input=mask_rcnn.pth --output=DIR

torch is imported only to read a .pth file; a state dict of numpy arrays converts without it.
"""
import argparse
import functools
import os
import sys
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from hatnet_jax import models
from hatnet_jax.models.heads import fpn_head

# Allocated by the official Attention module but never used in its forward pass; accepted and dropped.
_UNUSED = ('.attn.proj_norm.weight', '.attn.proj_norm.bias')


def _conv(w):  # (O, I, kh, kw) -> (kh, kw, I, O): flax.linen.Conv and the depthwise (k, k, 1, C) layout
  return np.transpose(w, (2, 3, 1, 0))


def _pointwise(w):  # 1x1 conv (O, I, 1, 1) or Linear (O, I) -> Dense (I, O)
  return np.transpose(w.reshape(w.shape[0], w.shape[1]))


def _same(w):
  return w


def _layout(variant: models.Variant, classifier: bool = True) -> dict[str, tuple[tuple[str, ...], int | None, Any]]:
  """Official state-dict key -> (Flax param path, index along the scanned block axis or None, transform)."""
  table = {}

  def norm(torch_prefix, path, index=None):
    table[torch_prefix + '.weight'] = (path + ('scale',), index, _same)
    table[torch_prefix + '.bias'] = (path + ('bias',), index, _same)

  def layer(torch_prefix, path, transform, index=None, bias=True):
    table[torch_prefix + '.weight'] = (path + ('kernel',), index, transform)
    if bias:
      table[torch_prefix + '.bias'] = (path + ('bias',), index, _same)

  layer('patch_embed.0', ('stem_conv1',), _conv)
  norm('patch_embed.1', ('stem_norm',))
  layer('patch_embed.3', ('stem_conv2',), _conv)
  for s, depth in enumerate(variant.depths):
    if s:
      layer(f'ds{s + 1}.conv', (f'down{s + 1}_conv',), _conv)
      norm(f'ds{s + 1}.norm', (f'down{s + 1}_norm',))
    for i in range(depth):
      t, base = f'blocks.{s}.{i}', (f'stage{s + 1}', 'blocks')
      norm(f'{t}.attn.norm', base + ('attn', 'norm'), i)
      layer(f'{t}.attn.qkv', base + ('attn', 'qkv'), _pointwise, i)
      layer(f'{t}.attn.proj', base + ('attn', 'proj'), _pointwise, i)
      if variant.grid_sizes[s] > 1:
        norm(f'{t}.attn.grid_norm', base + ('attn', 'grid_norm'), i)
        norm(f'{t}.attn.ds_norm', base + ('attn', 'ds_norm'), i)
        layer(f'{t}.attn.q', base + ('attn', 'q'), _pointwise, i)
        layer(f'{t}.attn.kv', base + ('attn', 'kv'), _pointwise, i)
      norm(f'{t}.conv.conv1.0', base + ('conv', 'norm1'), i)
      layer(f'{t}.conv.conv1.1', base + ('conv', 'fc1'), _pointwise, i, bias=False)
      layer(f'{t}.conv.conv2.0', base + ('conv', 'dwconv'), _conv, i, bias=False)
      layer(f'{t}.conv.conv3.0', base + ('conv', 'fc2'), _pointwise, i, bias=False)
      norm(f'{t}.conv.conv3.1', base + ('conv', 'norm2'), i)
  if classifier:
    layer('classifier.1', ('head',), _pointwise)
  return table


Layout = dict[str, tuple[str, tuple[str, ...], int | None, Any]]  # key -> (collection, path, index, transform)


def _backbone_layout(variant: models.Variant) -> Layout:
  """'backbone.' + the official HAT-Net layout (no classifier) -> params/backbone (mmseg and mmdet alike)."""
  return {'backbone.' + k: ('params', ('backbone',) + path, index, t)
          for k, (path, index, t) in _layout(variant, classifier=False).items()}


def _conv_entry(table: Layout, torch_prefix: str, path: tuple[str, ...], bias: bool = True) -> None:
  table[torch_prefix + '.weight'] = ('params', path + ('kernel',), None, _conv)
  if bias:
    table[torch_prefix + '.bias'] = ('params', path + ('bias',), None, _same)


def _seg_layout(variant: models.Variant, strides=(4, 8, 16, 32)) -> Layout:
  """mmseg EncoderDecoder (HAT-Net + FPN + FPNHead) state-dict key -> where it goes in SemanticFPN's variables."""
  table = _backbone_layout(variant)
  conv = functools.partial(_conv_entry, table)
  for i in range(len(variant.dims)):
    conv(f'neck.lateral_convs.{i}.conv', ('neck', f'lateral_convs_{i}'))
    conv(f'neck.fpn_convs.{i}.conv', ('neck', f'fpn_convs_{i}'))
  for i, n in enumerate(fpn_head.head_lengths(strides)):
    for k in range(n):
      j = 2 * k if strides[i] != strides[0] else k  # the parameter-free Upsample modules sit at odd indices
      t, base = f'decode_head.scale_heads.{i}.{j}', ('decode_head', f'scale_heads_{i}_{k}')
      conv(f'{t}.conv', base + ('conv',), bias=False)
      for torch_name, collection, name in [('weight', 'params', 'scale'), ('bias', 'params', 'bias'),
                                           ('running_mean', 'batch_stats', 'mean'),
                                           ('running_var', 'batch_stats', 'var')]:
        table[f'{t}.bn.{torch_name}'] = (collection, base + ('bn', name), None, _same)
  conv('decode_head.conv_seg', ('decode_head', 'conv_seg'))
  return table


def _fill(state: Mapping[str, np.ndarray], layout: Layout, expected: Mapping, ignored, what: str) -> dict:
  """Places every state entry by `layout` into trees shaped as `expected` ({collection: tree of shapes}).

  Keys for which ignored(key) is true are dropped. Missing, unexpected and wrongly shaped entries are all
  collected into one ValueError headed by `what`.
  """
  problems = []
  missing = sorted(k for k in layout if k not in state)
  unexpected = sorted(k for k in state if k not in layout and not ignored(k))
  if missing:
    problems.append(f'missing keys: {missing}')
  if unexpected:
    problems.append(f'unexpected keys: {unexpected}')

  flat_expected = traverse_util.flatten_dict(dict(expected))
  stacked: dict[tuple[str, ...], np.ndarray] = {}
  for key, (collection, path, index, transform) in layout.items():
    if key not in state:
      continue
    target = flat_expected[(collection,) + path]
    shape = target.shape[1:] if index is not None else target.shape
    value = transform(state[key])
    if value.shape != tuple(shape):
      problems.append(f'{key}: shape {tuple(state[key].shape)} converts to {value.shape}, '
                      f'but {"/".join(path)} needs {tuple(shape)}')
      continue
    if index is None:
      stacked[(collection,) + path] = value
    else:
      stacked.setdefault((collection,) + path, np.zeros(target.shape, np.float32))[index] = value
  if problems:
    shown = problems[:_MAX_LISTED] + ([f'... and {len(problems) - _MAX_LISTED} more mismatches']
                                      if len(problems) > _MAX_LISTED else [])
    raise ConversionError(f'checkpoint does not match {what}:\n  ' + '\n  '.join(shown), problems)

  return traverse_util.unflatten_dict(stacked)


class ConversionError(ValueError):
  """A checkpoint that does not fit the model; `problems` lists every mismatch."""

  def __init__(self, message: str, problems=()):
    super().__init__(message)
    self.problems = list(problems)


_MAX_LISTED = 12  # mismatches shown in a message (all of them are in ConversionError.problems)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads an official .pth without executing pickled code (torch.load(weights_only=True)); a
  ValueError/FileNotFoundError that names the file and says what it is when it cannot be read."""
  import argparse as _argparse  # DeiT-style training checkpoints also pickle their argparse.Namespace
  import torch
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} does not exist (or is not a file): give the .pth file of the weights')
  with open(path, 'rb') as f:
    head = f.read(8)
  try:
    with torch.serialization.safe_globals([_argparse.Namespace]):
      obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    # Never suggest weights_only=False (torch's own advice): that would run whatever code the file holds.
    # Objects other than tensors: a legacy pickle, or a zip one (mmengine checkpoints keep their message_hub).
    if head.startswith(b'\x80') or (head.startswith(b'PK') and type(e).__name__ == 'UnpicklingError'):
      what = ('a pickle that holds objects other than tensors; this converter loads tensors only and never '
              'runs code from a file. Re-save the state dict alone (torch.save(model.state_dict(), ...); '
              "of an mmseg/mmdet training checkpoint you trust, torch.save({'state_dict': ckpt['state_dict']}, ...))")
    elif head.startswith(b'PK'):
      what = 'a damaged or truncated PyTorch checkpoint (its zip archive cannot be read); download it again'
    else:
      what = (f'not a PyTorch checkpoint (it starts with {head!r}); give the official HAT-Net .pth '
              '(e.g. HAT-Net_Tiny.pth), an mmseg checkpoint with --task=segmentation or an mmdet one with '
              '--task=detection')
    raise ValueError(f'{path} is {what}.') from None
  return _unwrap(obj)


def _variant_hint(convert, state, model: str, num_classes: int | None) -> str:
  """' The shapes fit X: use --model=X.' when another variant of the family takes every array."""
  prefix = model[:len(model) - len(models.family(model)[0])]  # the family's: '', 'semfpn_', 'retinanet_'
  for name in models.VARIANTS:
    other = prefix + name
    if other == model:
      continue
    try:
      convert(state, other, num_classes)
    except ValueError:
      continue
    return f'\nThe shapes fit {other}: use --model={other}.'
  return ''


def _convert(path_or_state_dict, convert, classes_of, model: str, num_classes, overrides):
  """Reads the file (or unwraps the state dict), takes num_classes from `classes_of(state)` when not given,
  and converts; a mismatch of the default variant fields names the variant the shapes fit, if any. Errors
  about a file's contents start with the file's name."""
  is_path = isinstance(path_or_state_dict, (str, os.PathLike))
  state = load_state_dict(path_or_state_dict) if is_path else _unwrap(path_or_state_dict)
  source = f'{os.fspath(path_or_state_dict)}: ' if is_path else ''
  try:
    num_classes = classes_of(state) if num_classes is None else num_classes
    return convert(state, model, num_classes, **overrides)
  except ConversionError as e:  # with the table's variant fields: the variant the shapes fit, if any
    hint = '' if overrides else _variant_hint(convert, state, model, num_classes)
    raise ConversionError(source + str(e) + hint, e.problems) from None
  except ValueError as e:
    raise ValueError(source + str(e)) from None


def _first_axis(state, key: str, what: str) -> int:
  """num_classes of a state dict: the first axis of `key` (`what` the checkpoint should be)."""
  if key not in state:
    raise ValueError(f'no {key} in the state dict: is this {what}?')
  return state[key].shape[0]


def _unwrap(obj) -> dict[str, np.ndarray]:
  for wrapper in ('model', 'state_dict'):  # DeiT-style {'model': ...}; mmcv/mmseg {'state_dict': ..., 'meta': ...}
    if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
      obj = obj[wrapper]
      break
  if not isinstance(obj, Mapping):
    raise ValueError(f'expected a state dict (or one under "model" or "state_dict"), got {type(obj).__name__}')
  out = {}
  for k, v in obj.items():
    k = k[len('module.'):] if k.startswith('module.') else k  # saved from DistributedDataParallel
    out[k] = v.detach().cpu().float().numpy() if hasattr(v, 'detach') else np.asarray(v, np.float32)
  return out


def _expected(model, num_classes, overrides):
  """models.create(model, ...) and the shapes of its variables."""
  net = models.create(model, num_classes=num_classes, **overrides)
  return net, jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))


def from_pytorch(path_or_state_dict, model: str, num_classes: int | None = None, **overrides) -> dict:
  """Official HAT-Net weights -> Flax params of `models.create(model, num_classes=..., **overrides)`.

  Takes a .pth path or a state dict (plain, or wrapped under "model"; torch tensors or numpy arrays).
  num_classes defaults to the classifier's size in the file. Every key and shape is checked; all
  mismatches are listed in one ValueError.
  """
  if models.family(model)[1] is not models.HATNet:
    raise ValueError(f'from_pytorch converts HAT-Net classifiers; got {model!r} (use from_mmseg for semfpn_*, '
                     'from_mmdet for retinanet_* and maskrcnn_*)')
  classes_of = functools.partial(_first_axis, key='classifier.1.weight', what='a HAT-Net checkpoint')
  return _convert(path_or_state_dict, _classifier_params, classes_of, model, num_classes, overrides)


def _classifier_params(state, model, num_classes, **overrides):
  net, expected = _expected(model, num_classes, overrides)
  layout = {k: ('params',) + v for k, v in _layout(net.variant).items()}
  return _fill(state, layout, expected, lambda k: k.endswith(_UNUSED),
               f'{model} (num_classes={num_classes})')['params']


def from_mmseg(path_or_state_dict, model: str, num_classes: int | None = None, **overrides) -> dict:
  """An mmseg HAT-Net + Semantic FPN checkpoint -> {'params', 'batch_stats'} of `models.create(model, ...)`.

  model is a 'semfpn_*' name. Takes a .pth path (read with weights_only=True) or a state dict, plain or
  wrapped under "state_dict" as mmcv saves it. num_classes defaults to conv_seg's size in the file. The
  backbone is in the official HAT-Net layout under 'backbone.'; BN running statistics go to batch_stats;
  num_batches_tracked and the backbone's unused proj_norm are dropped. Anything else that does not map
  (an auxiliary head, say) is an error: all mismatches are listed in one ValueError.
  """
  if models.family(model)[1] is not models.SemanticFPN:
    raise ValueError(f'from_mmseg converts Semantic FPN models (semfpn_*); got {model!r}')
  classes_of = functools.partial(_first_axis, key='decode_head.conv_seg.weight',
                                 what='an mmseg Semantic FPN checkpoint')
  return _convert(path_or_state_dict, _segmentation_variables, classes_of, model, num_classes, overrides)


def _segmentation_variables(state, model, num_classes, **overrides):
  net, expected = _expected(model, num_classes, overrides)
  layout = _seg_layout(net.variant)

  def ignored(key):
    if key.endswith('.num_batches_tracked'):
      return key[:-len('num_batches_tracked')] + 'running_mean' in layout
    return key.startswith('backbone.') and key.endswith(_UNUSED)

  return _fill(state, layout, expected, ignored, f'{model} (num_classes={num_classes})')


def from_mmdet(path_or_state_dict, model: str, num_classes: int | None = None, **overrides) -> dict:
  """An mmdet HAT-Net + RetinaNet (retinanet_*) or Mask R-CNN (maskrcnn_*) checkpoint -> {'params'}: see
  `convert_mmdet.from_mmdet`."""
  from hatnet_jax.tools import convert_mmdet  # imported here: it builds on this module's machinery
  return convert_mmdet.from_mmdet(path_or_state_dict, model, num_classes, **overrides)


def save(params, directory: str | os.PathLike, batch_stats=None) -> None:
  """Writes {'params': params} (and 'batch_stats' if given) as an orbax PyTree checkpoint (`config.init_from`)."""
  import orbax.checkpoint as ocp
  ckptr = ocp.StandardCheckpointer()
  tree = {'params': params} if batch_stats is None else {'params': params, 'batch_stats': batch_stats}
  ckptr.save(os.path.abspath(os.fspath(directory)), tree)
  ckptr.wait_until_finished()


# --task -> (model families, their prefixes, converter, what --input is).
_TASKS = {'classification': ((models.HATNet,), 'hatnet_*', from_pytorch, 'official HAT-Net .pth'),
          'segmentation': ((models.SemanticFPN,), 'semfpn_*', from_mmseg, 'mmseg Semantic FPN checkpoint'),
          'detection': ((models.RetinaNet, models.MaskRCNN), 'retinanet_* or maskrcnn_*', from_mmdet,
                        'mmdet RetinaNet or Mask R-CNN checkpoint')}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--model', required=True, choices=models.names())
  parser.add_argument('--task', default='classification', choices=tuple(_TASKS),
                      help='; '.join(f'{task}: {t[3]} ({t[1]} models)' for task, t in _TASKS.items()))
  parser.add_argument('--input', required=True, help='the .pth file (see --task)')
  parser.add_argument('--output', required=True, help='directory for the orbax checkpoint (must not exist)')
  args = parser.parse_args(argv)
  if os.path.exists(args.output):
    parser.error(f'--output {args.output} already exists; choose a new directory')
  families, _, converter, _ = _TASKS[args.task]
  if models.family(args.model)[1] not in families:
    parser.error(f'--model {args.model} does not fit --task={args.task} ('
                 + ', '.join(f'--task={t} takes {v[1]}' for t, v in _TASKS.items()) + ')')
  try:
    variables = converter(args.input, args.model)
  except (ValueError, OSError) as e:  # the file: its message names it and says what to do
    print(f'Error: {e}', file=sys.stderr)
    return 1
  if families == (models.HATNet,):
    variables = {'params': variables}
  save(variables['params'], args.output, batch_stats=variables.get('batch_stats'))
  count = sum(np.size(x) for x in jax.tree.leaves(variables['params']))
  print(f'wrote {args.model} ({count:,} parameters) to {os.path.abspath(args.output)}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
