"""HAT-Net models: `create(name, ...)` builds a model family on a backbone variant from the table in `variants`.

Names are a family prefix + a variant name: 'hatnet_tiny' (classifier), 'semfpn_hatnet_tiny' (Semantic FPN),
'retinanet_hatnet_tiny' (RetinaNet), 'maskrcnn_hatnet_tiny' (Mask R-CNN).
"""
import jax.numpy as jnp

from hatnet_jax.models import layers
from hatnet_jax.models.backbone.attention import HMHSA, local_attention
from hatnet_jax.models.backbone.hatnet import HATNet
from hatnet_jax.models.mask_rcnn import MaskRCNN
from hatnet_jax.models.retinanet import RetinaNet
from hatnet_jax.models.semantic_fpn import SemanticFPN, backbone_params_from_classifier
from hatnet_jax.models.backbone.variants import VARIANTS, Variant, get_variant

__all__ = ['FAMILIES', 'HATNet', 'HMHSA', 'MaskRCNN', 'RetinaNet', 'SemanticFPN', 'VARIANTS', 'Variant',
           'backbone_params_from_classifier', 'create', 'family', 'stage_map_sizes', 'get_variant',
           'local_attention', 'names']

# Name prefix -> model class; the rest of the name is a row of VARIANTS. Every class takes the variant first
# and the keyword fields that `create` passes.
FAMILIES = {'semfpn_': SemanticFPN, 'retinanet_': RetinaNet, 'maskrcnn_': MaskRCNN, '': HATNet}
# Settings of a family beyond what every family takes (`create` passes them through as keywords).
_OWN_FIELDS = {SemanticFPN: ('neck_channels', 'head_channels'),
               RetinaNet: ('neck_channels', 'head_channels', 'num_anchors'),
               MaskRCNN: ('neck_channels', 'rpn_channels', 'num_anchors', 'fc_channels', 'mask_channels')}


def names() -> list[str]:
  return sorted(prefix + v for prefix in FAMILIES for v in VARIANTS)


def family(name: str) -> tuple[str, type]:
  """(backbone variant name, model class) of a model name; ValueError if it names no model."""
  if name not in names():
    raise ValueError(f'unknown model {name!r}; choose one of {names()}')
  prefix = next(p for p in FAMILIES if name.startswith(p) and name[len(p):] in VARIANTS)
  return name[len(prefix):], FAMILIES[prefix]


def stage_map_sizes(image_size: int, num_stages: int = 4) -> list[int]:
  """Side of each stage's map for a square input: the stem halves twice, each later stage once (3x3
  stride-2 convolutions with padding 1: ceil(n / 2)), so no map is ever smaller than 1x1."""
  sizes, n = [], -(-(-(-image_size // 2)) // 2)
  for i in range(num_stages):
    n = n if i == 0 else -(-n // 2)
    sizes.append(n)
  return sizes


def _dtype(d, field):
  """jnp.dtype of a name ('bfloat16') or dtype; ValueError naming the model field for a bad one."""
  try:
    return jnp.dtype(d)
  except TypeError:
    raise ValueError(f"model {field}={d!r} is not a dtype; use 'float32' or 'bfloat16'") from None


def xla_paths(depthwise_impl: str = 'auto', attention_impl: str | None = None, norm_impl: str = 'auto') -> dict:
  """The `create` arguments that replace the native CPU kernels these settings would take by XLA's own
  paths (for exported modules, which could not find the custom calls, and for XLA's cost analysis, which
  cannot see into them); settings that already name an XLA path are left out."""
  out = {}
  if depthwise_impl in ('auto', 'native'):
    out['depthwise_impl'] = layers.xla_depthwise_impl()
  if attention_impl in (None, '', 'native'):
    out['attention_impl'] = 'xla'  # what JAX's None chooses
  if norm_impl in ('auto', 'native'):
    out['norm_impl'] = 'xla'
  return out


def create(name: str, *, num_classes: int = 1000, drop_path_rate: float = 0.0, drop_rate: float = 0.0,
           head_drop_rate: float | None = None, dtype=jnp.float32, param_dtype=jnp.float32, remat: bool = False,
           unroll: bool | int = False, attention_impl: str | None = None, depthwise_impl: str = 'auto',
           norm_impl: str = 'auto', **overrides) -> HATNet | SemanticFPN | RetinaNet | MaskRCNN:
  """Model `name` ('hatnet_tiny', 'semfpn_hatnet_tiny', 'retinanet_hatnet_tiny', 'maskrcnn_hatnet_tiny', ...
  see names()); `overrides` replace fields of the backbone's table row (e.g. dims) or set the family's own
  fields (Semantic FPN: neck_channels, head_channels; RetinaNet: those and num_anchors; Mask R-CNN:
  neck_channels, rpn_channels, num_anchors, fc_channels, mask_channels).

  dtype is the compute dtype ('float32' or 'bfloat16'), param_dtype that of the parameters.
  remat rematerialises each block in the backward pass; unroll unrolls the scan over a stage's blocks: True
  every stage, an int N the stages of at most N blocks (faster steps, longer compiles; XLA's cost analysis
  counts every block of an unrolled stage).
  head_drop_rate: dropout before the classifier / conv_seg; None takes the family's default (0.2 for
  the classifier as the official model, 0.1 for Semantic FPN as mmseg); RetinaNet and Mask R-CNN have none.
  attention_impl: None/'' (the native CPU kernels on one CPU device in float32, else JAX chooses),
  'native' (those kernels), 'xla', or 'cudnn' (flash attention on GPU).
  depthwise_impl / norm_impl: 'auto' takes the native CPU kernels of the inverted residual's
  SiLU -> depthwise -> SiLU / of GroupNorm on one CPU device in float32; 'native' forces them; XLA's paths
  are 'shift' or 'conv' / 'xla'.
  """
  variant_name, cls = family(name)
  # Fields of the family's own module (e.g. SemanticFPN's neck_channels) go to it, the rest to the variant.
  own = {k: overrides.pop(k) for k in list(overrides) if k in _OWN_FIELDS.get(cls, ())}
  variant = get_variant(variant_name, **overrides)
  head = {} if head_drop_rate is None else {'head_drop_rate': head_drop_rate}
  if 'head_drop_rate' not in cls.__dataclass_fields__:
    if head_drop_rate:
      raise ValueError(f'{name} has no dropout before its head: leave head_drop_rate unset or 0 '
                       f'(got {head_drop_rate})')
    head = {}
  rates = (drop_path_rate, drop_rate, head_drop_rate or 0.0)
  if not all(0.0 <= r < 1.0 for r in rates):
    raise ValueError(f'drop rates must lie in [0, 1); got drop_path_rate={drop_path_rate}, '
                     f'drop_rate={drop_rate}, head_drop_rate={head_drop_rate}')
  if norm_impl not in ('auto', 'native', 'xla'):
    raise ValueError(f"norm_impl must be 'auto', 'native' or 'xla'; got {norm_impl!r}")
  if attention_impl not in (None, '', 'native', 'xla', 'cudnn'):
    raise ValueError(f"attention_impl must be '', 'native', 'xla' or 'cudnn'; got {attention_impl!r}")
  return cls(variant, num_classes=num_classes, drop_path_rate=drop_path_rate, drop_rate=drop_rate, **head,
             remat=remat, unroll=unroll, attention_impl=attention_impl or None, depthwise_impl=depthwise_impl,
             norm_impl=norm_impl,
             dtype=_dtype(dtype, 'dtype'), param_dtype=_dtype(param_dtype, 'param_dtype'), **own)
