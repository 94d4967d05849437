"""An independent PyTorch HAT-Net, written from the architecture description (issue 2), with the state-dict
layout of the official release (patch_embed.*, blocks.S.I.attn/conv.*, dsN.*, classifier.1.*).

Used by the parity tests and by benchmarks/model_speed.py --compare_torch. Beyond the official model it
accepts maps that the grid size / pooling ratio do not divide, with the semantics of hatnet_jax (windows
padded at the bottom/right with padded keys masked out; ceil-mode pooling that averages real pixels only),
so the Flax padding path is checked against an implementation written separately.
"""
import torch
import torch.nn.functional as F
from torch import nn


def gn(c):
  return nn.GroupNorm(1, c, eps=1e-6)


class Attention(nn.Module):

  def __init__(self, dim, head_dim, grid_size, ds_ratio, drop=0.0):
    super().__init__()
    self.heads, self.head_dim, self.grid, self.ratio = dim // head_dim, head_dim, grid_size, ds_ratio
    self.norm = gn(dim)
    self.qkv = nn.Conv2d(dim, 3 * dim, 1)
    self.proj = nn.Conv2d(dim, dim, 1)
    self.proj_norm = gn(dim)  # allocated, never used: the official model has it too
    self.drop = nn.Dropout2d(drop)
    if grid_size > 1:
      self.grid_norm = gn(dim)
      self.ds_norm = gn(dim)
      self.q = nn.Conv2d(dim, dim, 1)
      self.kv = nn.Conv2d(dim, 2 * dim, 1)

  def _heads(self, t, parts):  # (B, parts*C, H, W) -> parts x (B, heads, HW, d)
    b, _, h, w = t.shape
    t = t.reshape(b, parts, self.heads, self.head_dim, h * w).permute(1, 0, 2, 4, 3)
    return t.unbind(0)

  def _local(self, qkv):
    b, c3, h, w = qkv.shape
    g = self.grid
    hp, wp = -(-h // g) * g, -(-w // g) * g
    valid = torch.zeros(hp, wp, dtype=torch.bool, device=qkv.device)
    valid[:h, :w] = True
    qkv = F.pad(qkv, (0, wp - w, 0, hp - h))
    nh, nw = hp // g, wp // g
    t = qkv.reshape(b, 3, self.heads, self.head_dim, nh, g, nw, g).permute(1, 0, 2, 4, 6, 5, 7, 3)
    q, k, v = t.reshape(3, b, self.heads, nh * nw, g * g, self.head_dim).unbind(0)
    keys = valid.reshape(nh, g, nw, g).permute(0, 2, 1, 3).reshape(nh * nw, 1, g * g)
    attn = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)
    attn = attn.masked_fill(~keys, float('-inf')).softmax(-1)
    out = (attn @ v).reshape(b, self.heads, nh, nw, g, g, self.head_dim)
    out = out.permute(0, 1, 6, 2, 4, 3, 5).reshape(b, c3 // 3, hp, wp)
    return out[:, :, :h, :w]

  def forward(self, x):
    b, c, h, w = x.shape
    qkv = self.qkv(self.norm(x))
    if self.grid > 1:
      xg = self.grid_norm(x + self._local(qkv))
      (q,) = self._heads(self.q(xg), 1)
      pooled = F.avg_pool2d(xg, self.ratio, self.ratio, ceil_mode=True, count_include_pad=False)
      k, v = self._heads(self.kv(self.ds_norm(pooled)), 2)
    else:
      q, k, v = self._heads(qkv, 3)
    attn = ((q * self.head_dim ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
    y = (attn @ v).transpose(-2, -1).reshape(b, c, h, w)
    if self.grid > 1:
      y = y + xg
    return self.drop(self.proj(y))


class InvertedResidual(nn.Module):

  def __init__(self, dim, expansion, kernel_size, drop=0.0):
    super().__init__()
    hidden = dim * expansion
    self.conv1 = nn.Sequential(gn(dim), nn.Conv2d(dim, hidden, 1, bias=False), nn.SiLU())
    self.conv2 = nn.Sequential(nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden,
                                         bias=False), nn.SiLU())
    self.conv3 = nn.Sequential(nn.Conv2d(hidden, dim, 1, bias=False), gn(dim))
    self.drop = nn.Dropout2d(drop)

  def forward(self, x):
    return self.drop(self.conv3(self.drop(self.conv2(self.conv1(x)))))


class DropPath(nn.Module):

  def __init__(self, p):
    super().__init__()
    self.p = p

  def forward(self, x):
    if not self.training or self.p == 0:
      return x
    keep = 1 - self.p
    return x / keep * x.new_empty((x.shape[0], 1, 1, 1)).bernoulli_(keep)


class Block(nn.Module):

  def __init__(self, dim, head_dim, grid_size, ds_ratio, expansion, kernel_size, drop_path=0.0, drop=0.0):
    super().__init__()
    self.attn = Attention(dim, head_dim, grid_size, ds_ratio, drop)
    self.conv = InvertedResidual(dim, expansion, kernel_size, drop)
    self.drop_path = DropPath(drop_path)

  def forward(self, x):
    x = x + self.drop_path(self.attn(x))
    return x + self.drop_path(self.conv(x))


class Downsample(nn.Module):

  def __init__(self, cin, cout):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
    self.norm = gn(cout)

  def forward(self, x):
    return self.norm(self.conv(x))


class HATNet(nn.Module):
  """Takes NCHW images; `variant` is a hatnet_jax.models.Variant (or anything with its fields)."""

  def __init__(self, variant, num_classes=1000, drop_path_rate=0.0, drop_rate=0.0):
    super().__init__()
    v = variant
    self.patch_embed = nn.Sequential(nn.Conv2d(3, v.stem_dim, 3, 2, 1), gn(v.stem_dim), nn.SiLU(),
                                     nn.Conv2d(v.stem_dim, v.dims[0], 3, 2, 1))
    rates = torch.linspace(0, drop_path_rate, sum(v.depths)).tolist()
    stages, n = [], 0
    for s, dim in enumerate(v.dims):
      stages.append(nn.ModuleList([
          Block(dim, v.head_dim, v.grid_sizes[s], v.ds_ratios[s], v.expansions[s], v.kernel_sizes[s],
                rates[n + i], drop_rate) for i in range(v.depths[s])]))
      n += v.depths[s]
    self.blocks = nn.ModuleList(stages)
    for s in range(1, len(v.dims)):
      setattr(self, f'ds{s + 1}', Downsample(v.dims[s - 1], v.dims[s]))
    self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(v.dims[-1], num_classes))
    for m in self.modules():
      if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
          nn.init.zeros_(m.bias)

  def features(self, x):
    x = self.patch_embed(x)
    maps = []
    for s, blocks in enumerate(self.blocks):
      if s:
        x = getattr(self, f'ds{s + 1}')(x)
      for block in blocks:
        x = block(x)
      maps.append(x)
    return maps

  def forward(self, x):
    return self.classifier(self.features(x)[-1].mean((2, 3)))


def randomize_norms(model: nn.Module, seed: int = 0):
  """Non-trivial GroupNorm scales and biases, so that the parity test exercises them."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.GroupNorm):
        m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
        m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
  return model
