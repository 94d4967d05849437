"""The HAT-Net family as a table of hyper-parameters (one row per variant, as in the official model file)."""
import dataclasses


@dataclasses.dataclass(frozen=True)
class Variant:
  """Hyper-parameters of one HAT-Net variant; per-stage tuples have one entry per stage."""
  dims: tuple[int, ...]
  head_dim: int
  expansions: tuple[int, ...]
  grid_sizes: tuple[int, ...]  # local-attention window size G (1: plain global MHSA)
  ds_ratios: tuple[int, ...]  # average-pooling ratio r for the global keys/values
  depths: tuple[int, ...]
  kernel_sizes: tuple[int, ...]  # depthwise kernel size of the inverted residual
  stem_dim: int = 16

  def __post_init__(self):
    n = len(self.dims)
    for field in ('expansions', 'grid_sizes', 'ds_ratios', 'depths', 'kernel_sizes'):
      if len(getattr(self, field)) != n:
        raise ValueError(f'{field}={getattr(self, field)} needs one entry per stage ({n} stages, dims={self.dims})')
    for d in self.dims:
      if d % self.head_dim:
        raise ValueError(f'every stage dim must be a multiple of head_dim={self.head_dim}; got dims={self.dims}')
    for k in self.kernel_sizes:
      if k % 2 == 0:
        raise ValueError(f'kernel sizes must be odd (same padding); got {self.kernel_sizes}')
    if min(self.depths) < 1 or min(self.grid_sizes) < 1 or min(self.ds_ratios) < 1:
      raise ValueError('depths, grid_sizes and ds_ratios must be >= 1')


_COMMON = dict(expansions=(8, 8, 4, 4), grid_sizes=(8, 7, 7, 1), ds_ratios=(8, 4, 2, 1))

VARIANTS = {
    'hatnet_tiny': Variant(dims=(48, 96, 240, 384), head_dim=48, depths=(2, 2, 6, 3),
                           kernel_sizes=(3, 3, 3, 3), **_COMMON),
    'hatnet_small': Variant(dims=(64, 128, 320, 512), head_dim=64, depths=(2, 3, 8, 3),
                            kernel_sizes=(3, 3, 3, 3), **_COMMON),
    'hatnet_medium': Variant(dims=(64, 128, 320, 512), head_dim=64, depths=(3, 6, 18, 3),
                             kernel_sizes=(5, 3, 5, 3), **_COMMON),
    'hatnet_large': Variant(dims=(64, 128, 320, 640), head_dim=64, depths=(3, 8, 27, 3),
                            kernel_sizes=(3, 3, 3, 3), **_COMMON),
}



def get_variant(name: str, **overrides) -> Variant:
  """The table row `name`, with any fields replaced by `overrides` (tuples for per-stage fields)."""
  if name not in VARIANTS:
    raise ValueError(f'unknown model {name!r}; choose one of {sorted(VARIANTS)}')
  fields = {f.name for f in dataclasses.fields(Variant)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f'unknown model override(s) {unknown}; valid fields: {sorted(fields)}')
  overrides = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in overrides.items()}
  return dataclasses.replace(VARIANTS[name], **overrides)
