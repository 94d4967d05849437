// GroupNorm with one group (statistics over H, W and C of each image, per-channel affine), float32 NHWC, and
// its gradient, as XLA FFI handlers for the CPU backend (hatnet_jax/models/kernels/fused_group_norm.py builds and
// registers them).
//
// Why hand-written: on XLA's CPU backend HAT-Net's GroupNorms (three per block, computed in float32 with a
// two-pass variance) are separate reduction and element-wise passes, 14 % of hatnet_tiny's train step
// (BENCHMARKS.md). Here the forward reads each band of rows twice while it is in cache (its sum, then its
// squared deviations from its own mean, merged across bands with Chan's formula) and writes the output in
// a second sweep; the backward reads the input and the incoming gradient once for its sums and once more to
// write the input gradient.
//
// Determinism: work is split into fixed (image, band) chunks whatever the thread count, and partial sums
// are merged in chunk order, so results are bitwise reproducible.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu_kernels.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace hatnet_native;

constexpr int64_t kBandRows = 8;

struct Geometry {
  int64_t batch, height, width, channels;
  int64_t Bands() const { return (height + kBandRows - 1) / kBandRows; }
  int64_t RowFloats() const { return width * channels; }
  int64_t ImageFloats() const { return height * RowFloats(); }
};

// Sum of n floats (vector lanes, then the lanes in order).
inline double SumFloats(const float* x, int64_t n) {
  Vec acc{};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) acc += Load(x + i);
  double sum = 0.0;
  for (int64_t l = 0; l < kLanes; ++l) sum += acc[l];
  for (; i < n; ++i) sum += x[i];
  return sum;
}

inline double SumSquaredDeviations(const float* x, int64_t n, float mean) {
  Vec acc{};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const Vec d = Load(x + i) - mean;
    acc += d * d;
  }
  double sum = 0.0;
  for (int64_t l = 0; l < kLanes; ++l) sum += acc[l];
  for (; i < n; ++i) sum += (x[i] - mean) * (x[i] - mean);
  return sum;
}

ffi::Error Check(const ffi::Buffer<ffi::F32>& x, const ffi::Buffer<ffi::F32>& scale, Geometry& g) {
  const auto xd = x.dimensions();
  const auto sd = scale.dimensions();
  if (xd.size() != 4 || sd.size() != 1 || sd[0] != xd[3]) {
    return ffi::Error::InvalidArgument("group_norm: x must be (B, H, W, C) and scale and bias (C,)");
  }
  g = Geometry{xd[0], xd[1], xd[2], xd[3]};
  return ffi::Error::Success();
}

// Per image: mean and 1 / sqrt(var + eps) (two-pass variance per band, bands merged with Chan's formula).
void Statistics(ffi::ThreadPool& pool, const Geometry& g, const float* x, float eps, float* mean, float* rstd) {
  const int64_t bands = g.Bands();
  std::vector<double> band_mean(g.batch * bands), band_m2(g.batch * bands), band_n(g.batch * bands);
  ParallelFor(pool, g.batch * bands, [&](int64_t i) {
    const int64_t b = i / bands, y0 = i % bands * kBandRows, y1 = std::min(g.height, y0 + kBandRows);
    const float* p = x + b * g.ImageFloats() + y0 * g.RowFloats();
    const int64_t n = (y1 - y0) * g.RowFloats();
    const double m = SumFloats(p, n) / n;
    band_mean[i] = m;
    band_m2[i] = SumSquaredDeviations(p, n, static_cast<float>(m)) - n * (static_cast<float>(m) - m) *
                                                                      (static_cast<float>(m) - m);
    band_n[i] = n;
  });
  for (int64_t b = 0; b < g.batch; ++b) {
    double n = 0.0, m = 0.0, m2 = 0.0;
    for (int64_t j = b * bands; j < (b + 1) * bands; ++j) {
      const double nb = band_n[j], delta = band_mean[j] - m, total = n + nb;
      m += delta * nb / total;
      m2 += band_m2[j] + delta * delta * n * nb / total;
      n = total;
    }
    mean[b] = static_cast<float>(m);
    rstd[b] = static_cast<float>(1.0 / std::sqrt(m2 / n + eps));
  }
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                   ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::F32> mean,
                   ffi::ResultBuffer<ffi::F32> rstd, float eps) {
  Geometry g;
  if (ffi::Error e = Check(x, scale, g); e.failure()) return e;
  const float *xp = x.typed_data(), *sp = scale.typed_data(), *bp = bias.typed_data();
  float *yp = y->typed_data(), *mp = mean->typed_data(), *rp = rstd->typed_data();
  Statistics(pool, g, xp, eps, mp, rp);
  const int64_t bands = g.Bands(), c = g.channels;
  ParallelFor(pool, g.batch * bands, [&](int64_t i) {
    const int64_t b = i / bands, y0 = i % bands * kBandRows, y1 = std::min(g.height, y0 + kBandRows);
    const int64_t start = b * g.ImageFloats() + y0 * g.RowFloats(), pixels = (y1 - y0) * g.width;
    const float m = mp[b], r = rp[b];
    // y = x * (r scale) + (bias - m r scale): per-channel factors, made once per chunk.
    std::vector<float> a(c), k(c);
    for (int64_t ch = 0; ch < c; ++ch) {
      a[ch] = r * sp[ch];
      k[ch] = bp[ch] - m * a[ch];
    }
    for (int64_t px = 0; px < pixels; ++px) {
      const float* in = xp + start + px * c;
      float* out = yp + start + px * c;
      int64_t ch = 0;
      for (; ch + kLanes <= c; ch += kLanes) Store(out + ch, Load(in + ch) * Load(a.data() + ch) + Load(k.data() + ch));
      for (; ch < c; ++ch) out[ch] = in[ch] * a[ch] + k[ch];
    }
  });
  return ffi::Error::Success();
}

constexpr int64_t kBlock = 4;  // channel vectors whose gradient sums stay in registers

// Over a chunk's pixels, for channels [ch, ch + NV * kLanes): dscale and dbias sums (stored to ds, db), and
// sum(g s), sum(g s xhat) accumulated into vgs, vgsx.
template <int NV>
inline void ChannelBlock(const float* in, const float* grad, const float* scale, int64_t pixels, int64_t c,
                         int64_t ch, float m, float r, float* ds, float* db, Vec& vgs, Vec& vgsx) {
  Vec ads[NV], adb[NV], s[NV];
  for (int v = 0; v < NV; ++v) {
    ads[v] = Vec{};
    adb[v] = Vec{};
    s[v] = Load(scale + ch + v * kLanes);
  }
  for (int64_t px = 0; px < pixels; ++px) {
    for (int v = 0; v < NV; ++v) {
      const int64_t o = px * c + ch + v * kLanes;
      const Vec xhat = (Load(in + o) - m) * r, gv = Load(grad + o), gsv = gv * s[v];
      vgs += gsv;
      vgsx += gsv * xhat;
      ads[v] += gv * xhat;
      adb[v] += gv;
    }
  }
  for (int v = 0; v < NV; ++v) {
    Store(ds + ch + v * kLanes, ads[v]);
    Store(db + ch + v * kLanes, adb[v]);
  }
}

// dx = rstd (g s - mean(g s) - xhat mean(g s xhat)), dscale = sum over pixels of g xhat, dbias = sum of g.
ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                    ffi::Buffer<ffi::F32> mean, ffi::Buffer<ffi::F32> rstd, ffi::Buffer<ffi::F32> dy,
                    ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dscale,
                    ffi::ResultBuffer<ffi::F32> dbias) {
  Geometry g;
  if (ffi::Error e = Check(x, scale, g); e.failure()) return e;
  const float *xp = x.typed_data(), *sp = scale.typed_data(), *mp = mean.typed_data(), *rp = rstd.typed_data();
  const float* gp = dy.typed_data();
  float *dxp = dx->typed_data(), *dsp = dscale->typed_data(), *dbp = dbias->typed_data();
  const int64_t bands = g.Bands(), chunks = g.batch * bands, c = g.channels;
  // Per chunk: sum(g s), sum(g s xhat), and per channel sum(g xhat), sum(g).
  std::vector<double> sum_gs(chunks), sum_gsx(chunks);
  std::vector<float> part_dscale(chunks * c), part_dbias(chunks * c);
  ParallelFor(pool, chunks, [&](int64_t i) {
    const int64_t b = i / bands, y0 = i % bands * kBandRows, y1 = std::min(g.height, y0 + kBandRows);
    const int64_t start = b * g.ImageFloats() + y0 * g.RowFloats(), pixels = (y1 - y0) * g.width;
    const float m = mp[b], r = rp[b];
    float *ds = part_dscale.data() + i * c, *db = part_dbias.data() + i * c;
    const float* in = xp + start;
    const float* grad = gp + start;
    // Channels in blocks of up to kBlock vectors whose sums stay in registers over the chunk's pixels
    // (at most 8 rows: a few thousand terms per lane), then the scalar tail of channels.
    Vec vgs{}, vgsx{};
    const int64_t vectors = c / kLanes;
    for (int64_t v0 = 0; v0 < vectors; v0 += kBlock) {
      const int64_t ch = v0 * kLanes;
      switch (std::min(kBlock, vectors - v0)) {
        case 1: ChannelBlock<1>(in, grad, sp, pixels, c, ch, m, r, ds, db, vgs, vgsx); break;
        case 2: ChannelBlock<2>(in, grad, sp, pixels, c, ch, m, r, ds, db, vgs, vgsx); break;
        case 3: ChannelBlock<3>(in, grad, sp, pixels, c, ch, m, r, ds, db, vgs, vgsx); break;
        default: ChannelBlock<4>(in, grad, sp, pixels, c, ch, m, r, ds, db, vgs, vgsx); break;
      }
    }
    float tgs = 0.0f, tgsx = 0.0f;
    for (int64_t t = vectors * kLanes; t < c; ++t) {
      float sds = 0.0f, sdb = 0.0f;
      for (int64_t px = 0; px < pixels; ++px) {
        const float xhat = (in[px * c + t] - m) * r, gv = grad[px * c + t], gsv = gv * sp[t];
        tgs += gsv;
        tgsx += gsv * xhat;
        sds += gv * xhat;
        sdb += gv;
      }
      ds[t] = sds;
      db[t] = sdb;
    }
    double gs = tgs, gsx = tgsx;
    for (int64_t l = 0; l < kLanes; ++l) {
      gs += vgs[l];
      gsx += vgsx[l];
    }
    sum_gs[i] = gs;
    sum_gsx[i] = gsx;
  });
  std::vector<float> mean_gs(g.batch), mean_gsx(g.batch);
  const double n = static_cast<double>(g.ImageFloats());
  for (int64_t b = 0; b < g.batch; ++b) {
    double a = 0.0, s = 0.0;
    for (int64_t j = b * bands; j < (b + 1) * bands; ++j) {
      a += sum_gs[j];
      s += sum_gsx[j];
    }
    mean_gs[b] = static_cast<float>(a / n);
    mean_gsx[b] = static_cast<float>(s / n);
  }
  for (int64_t ch = 0; ch < c; ++ch) {
    double s = 0.0, t = 0.0;
    for (int64_t i = 0; i < chunks; ++i) {
      s += part_dscale[i * c + ch];
      t += part_dbias[i * c + ch];
    }
    dsp[ch] = static_cast<float>(s);
    dbp[ch] = static_cast<float>(t);
  }
  ParallelFor(pool, chunks, [&](int64_t i) {
    const int64_t b = i / bands, y0 = i % bands * kBandRows, y1 = std::min(g.height, y0 + kBandRows);
    const int64_t start = b * g.ImageFloats() + y0 * g.RowFloats(), pixels = (y1 - y0) * g.width;
    const float m = mp[b], r = rp[b], m1 = mean_gs[b], m2 = mean_gsx[b];
    for (int64_t px = 0; px < pixels; ++px) {
      const float *in = xp + start + px * c, *grad = gp + start + px * c;
      float* out = dxp + start + px * c;
      int64_t ch = 0;
      for (; ch + kLanes <= c; ch += kLanes) {
        const Vec xhat = (Load(in + ch) - m) * r;
        Store(out + ch, r * (Load(grad + ch) * Load(sp + ch) - m1 - xhat * m2));
      }
      for (; ch < c; ++ch) out[ch] = r * (grad[ch] * sp[ch] - m1 - (in[ch] - m) * r * m2);
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(HatnetGroupNormFwd, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(HatnetGroupNormBwd, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
