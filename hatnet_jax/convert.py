"""Official PyTorch HAT-Net weights (HAT-Net_Tiny.pth ...) -> Flax params, and a command line that writes them
as an orbax checkpoint the trainer can start from (`config.init_from`).

    python -m hatnet_jax.convert --model=hatnet_tiny --input=HAT-Net_Tiny.pth --output=DIR

torch is imported only to read a .pth file; a state dict of numpy arrays converts without it.
"""
import argparse
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hatnet_jax import models

# Allocated by the official Attention module but never used in its forward pass; accepted and dropped.
_UNUSED = ('.attn.proj_norm.weight', '.attn.proj_norm.bias')


def _conv(w):  # (O, I, kh, kw) -> (kh, kw, I, O): flax.linen.Conv and the depthwise (k, k, 1, C) layout
  return np.transpose(w, (2, 3, 1, 0))


def _pointwise(w):  # 1x1 conv (O, I, 1, 1) or Linear (O, I) -> Dense (I, O)
  return np.transpose(w.reshape(w.shape[0], w.shape[1]))


def _same(w):
  return w


def _layout(variant: models.Variant) -> dict[str, tuple[tuple[str, ...], int | None, Any]]:
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
  layer('classifier.1', ('head',), _pointwise)
  return table


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads an official .pth without executing pickled code (torch.load(weights_only=True))."""
  import argparse as _argparse  # DeiT-style training checkpoints also pickle their argparse.Namespace
  import torch
  with torch.serialization.safe_globals([_argparse.Namespace]):
    obj = torch.load(os.fspath(path), map_location='cpu', weights_only=True)
  return _unwrap(obj)


def _unwrap(obj) -> dict[str, np.ndarray]:
  if isinstance(obj, Mapping) and 'model' in obj and isinstance(obj['model'], Mapping):
    obj = obj['model']  # a training checkpoint: {'model': state_dict, 'optimizer': ..., ...}
  if not isinstance(obj, Mapping):
    raise ValueError(f'expected a state dict (or one under "model"), got {type(obj).__name__}')
  out = {}
  for k, v in obj.items():
    k = k[len('module.'):] if k.startswith('module.') else k  # saved from DistributedDataParallel
    out[k] = v.detach().cpu().float().numpy() if hasattr(v, 'detach') else np.asarray(v, np.float32)
  return out


def from_pytorch(path_or_state_dict, model: str, num_classes: int | None = None, **overrides) -> dict:
  """Official HAT-Net weights -> Flax params of `models.create(model, num_classes=..., **overrides)`.

  Takes a .pth path or a state dict (plain, or wrapped under "model"; torch tensors or numpy arrays).
  num_classes defaults to the classifier's size in the file. Every key and shape is checked; all
  mismatches are listed in one ValueError.
  """
  if isinstance(path_or_state_dict, (str, os.PathLike)):
    state = load_state_dict(path_or_state_dict)
  else:
    state = _unwrap(path_or_state_dict)
  if num_classes is None:
    if 'classifier.1.weight' not in state:
      raise ValueError('no classifier.1.weight in the state dict: is this a HAT-Net checkpoint?')
    num_classes = state['classifier.1.weight'].shape[0]
  net = models.create(model, num_classes=num_classes, **overrides)
  expected = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))['params']
  layout = _layout(net.variant)

  problems = []
  missing = sorted(k for k in layout if k not in state)
  unexpected = sorted(k for k in state if k not in layout and not k.endswith(_UNUSED))
  if missing:
    problems.append(f'missing keys: {missing}')
  if unexpected:
    problems.append(f'unexpected keys: {unexpected}')

  stacked: dict[tuple[str, ...], np.ndarray] = {}
  for key, (path, index, transform) in layout.items():
    if key not in state:
      continue
    target = expected
    for p in path:
      target = target[p]
    shape = target.shape[1:] if index is not None else target.shape
    value = transform(state[key])
    if value.shape != tuple(shape):
      problems.append(f'{key}: shape {tuple(state[key].shape)} converts to {value.shape}, '
                      f'but {"/".join(path)} of {model} needs {tuple(shape)}')
      continue
    if index is None:
      stacked[path] = value
    else:
      stacked.setdefault(path, np.zeros(target.shape, np.float32))[index] = value
  if problems:
    raise ValueError(f'checkpoint does not match {model} (num_classes={num_classes}):\n  ' + '\n  '.join(problems))

  params: dict = {}
  for path, value in stacked.items():
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = value
  return params


def save(params, directory: str | os.PathLike) -> None:
  """Writes {'params': params} as an orbax PyTree checkpoint (what `config.init_from` reads)."""
  import orbax.checkpoint as ocp
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.abspath(os.fspath(directory)), {'params': params})
  ckptr.wait_until_finished()


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--model', required=True, choices=models.names())
  parser.add_argument('--input', required=True, help='official .pth file')
  parser.add_argument('--output', required=True, help='directory for the orbax checkpoint (must not exist)')
  args = parser.parse_args(argv)
  if os.path.exists(args.output):
    parser.error(f'--output {args.output} already exists; choose a new directory')
  params = from_pytorch(args.input, args.model)
  save(params, args.output)
  count = sum(np.size(x) for x in jax.tree.leaves(params))
  print(f'wrote {args.model} ({count:,} parameters) to {os.path.abspath(args.output)}')


if __name__ == '__main__':
  main()
