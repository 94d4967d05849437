// SiLU -> depthwise kxk convolution (stride 1, same padding, no bias) -> SiLU of an NHWC float32 map, and
// its gradient, as XLA FFI handlers for the CPU backend (hatnet_jax/models/kernels/fused_depthwise.py builds and
// registers them).
//
// Why hand-written: XLA's CPU backend runs this middle of HAT-Net's inverted residual as 3 forward and
// ~15 backward passes over the expanded map (the sigmoid, the padded product, the shifted taps, one
// reduction per kernel tap), each reading and writing the full map; no XLA formulation fuses them (see
// BENCHMARKS.md). Here each pass goes over an image in bands of rows with ring buffers of k rows, so the
// forward reads its input once and writes its output once, and the backward reads the input and the
// incoming gradient once and writes the input gradient once, each position's k*k taps (and the kernel
// gradient's k*k sums along a row) accumulated in vector registers. The backward saves nothing from the
// forward but its input: it recomputes SiLU and the convolution.
//
// Determinism: work is split into fixed (image, band) chunks whatever the thread count, and the kernel
// gradient's per-chunk partial sums are added in chunk order, so results are bitwise reproducible.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu_kernels.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Channels go in vectors of kLanes floats so that the k*k taps of a position accumulate in registers; a
// channel tail that does not fill a vector takes the scalar path.
constexpr int64_t kMaxK = 7;
using namespace hatnet_native;

template <typename T>
inline T Sigmoid(T x) { return 1.0f / (1.0f + Exp(-x)); }
// d SiLU(h) / dh = s (1 + h (1 - s)), s = sigmoid(h).
template <typename T>
inline T SiluGrad(T h) {
  const T s = Sigmoid(h);
  return s * (1.0f + h * (1.0f - s));
}

struct Geometry {
  int64_t batch, height, width, channels, k, pad;
  int64_t RowFloats() const { return width * channels; }
  int64_t PaddedRowFloats() const { return (width + 2 * pad) * channels; }
  // Rows of output per chunk: bands of at most 16 rows, as equal as possible (fixed, whatever the threads).
  int64_t Bands() const { return (height + 15) / 16; }
  int64_t BandStart(int64_t band) const { return band * height / Bands(); }
};

// A ring of k padded rows (pad zero columns each side); row r lives in slot r mod k.
class Ring {
 public:
  explicit Ring(const Geometry& g) : g_(g), data_(g.k * g.PaddedRowFloats(), 0.0f) {}
  float* Row(int64_t r) { return data_.data() + ((r % g_.k + g_.k) % g_.k) * g_.PaddedRowFloats(); }
  float* Interior(int64_t r) { return Row(r) + g_.pad * g_.channels; }

 private:
  const Geometry& g_;
  std::vector<float> data_;
};

// Loads SiLU(x[b, r]) into the ring (zeros for rows outside the image).
void LoadSilu(const Geometry& g, const float* x, int64_t b, int64_t r, Ring& ring) {
  float* dst = ring.Interior(r);
  const int64_t n = g.RowFloats();
  if (r < 0 || r >= g.height) {
    std::memset(dst, 0, n * sizeof(float));
    return;
  }
  const float* src = x + (b * g.height + r) * n;
  // In vectors: GCC vectorises the scalar form only where it can mask Exp's clamps (AVX-512), and the
  // scalar loop was a fifth of hatnet_tiny's inference on a Zen 3 EPYC (AVX2).
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const Vec v = Load(src + i);
    Store(dst + i, v * Sigmoid(v));
  }
  for (; i < n; ++i) dst[i] = src[i] * Sigmoid(src[i]);
}

template <typename T>
inline T Get(const float* p) {
  if constexpr (std::is_same_v<T, float>) {
    return *p;
  } else {
    return Load(p);
  }
}
inline void Put(float* p, float v) { *p = v; }
inline void Put(float* p, Vec v) { Store(p, v); }

// For each position x of a row and each channel vector (then each tail channel) ch:
//   epilogue(x, ch, sum_ij rows[i][(x + col0 + sign j) C + ch] * kernel[i, j, ch]),
// the k*k taps accumulated in registers. KT: the kernel size, or 0 for any (read from g).
template <int KT, typename Epilogue>
void CorrelateRow(const Geometry& g, const float* const* rows, int64_t col0, int64_t sign, const float* kernel,
                  Epilogue epilogue) {
  const int64_t k = KT ? KT : g.k, c = g.channels, cv = c - c % kLanes;
  auto at = [&](auto zero, int64_t x, int64_t ch) {
    using T = decltype(zero);
    T acc = zero;
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j < k; ++j) {
        acc += Get<T>(rows[i] + (x + col0 + sign * j) * c + ch) * Get<T>(kernel + (i * k + j) * c + ch);
      }
    }
    epilogue(x, ch, acc);
  };
  for (int64_t x = 0; x < g.width; ++x) {
    for (int64_t ch = 0; ch < cv; ch += kLanes) at(Vec{}, x, ch);
    for (int64_t ch = cv; ch < c; ++ch) at(0.0f, x, ch);
  }
}

// dk[i, j, ch] += sum_x rows[i][(x + j) C + ch] * d[x C + ch], the k*k sums of a channel vector in registers.
template <int KT>
void AccumulateKernelGrad(const Geometry& g, const float* const* rows, const float* d, float* dk) {
  const int64_t k = KT ? KT : g.k, c = g.channels, cv = c - c % kLanes;
  auto sums = [&](auto zero, int64_t ch) {
    using T = decltype(zero);
    T acc[kMaxK * kMaxK];
    for (int64_t t = 0; t < k * k; ++t) acc[t] = Get<T>(dk + t * c + ch);
    for (int64_t x = 0; x < g.width; ++x) {
      const T dd = Get<T>(d + x * c + ch);
      for (int64_t i = 0; i < k; ++i) {
        for (int64_t j = 0; j < k; ++j) acc[i * k + j] += Get<T>(rows[i] + (x + j) * c + ch) * dd;
      }
    }
    for (int64_t t = 0; t < k * k; ++t) Put(dk + t * c + ch, acc[t]);
  };
  for (int64_t ch = 0; ch < cv; ch += kLanes) sums(Vec{}, ch);
  for (int64_t ch = cv; ch < c; ++ch) sums(0.0f, ch);
}

template <int KT>
void ForwardChunk(const Geometry& g, const float* x, const float* kernel, float* y, int64_t b, int64_t y0,
                  int64_t y1) {
  const int64_t c = g.channels;
  Ring a1(g);
  const float* rows[kMaxK];
  for (int64_t r = y0 - g.pad; r < y0 + g.pad; ++r) LoadSilu(g, x, b, r, a1);
  for (int64_t r = y0; r < y1; ++r) {
    LoadSilu(g, x, b, r + g.pad, a1);
    for (int64_t i = 0; i < g.k; ++i) rows[i] = a1.Row(r - g.pad + i);
    float* out = y + (b * g.height + r) * g.RowFloats();
    CorrelateRow<KT>(g, rows, 0, 1, kernel, [&](int64_t xx, int64_t ch, auto h2) {
      Put(out + xx * c + ch, h2 * Sigmoid(h2));
    });
  }
}

// Rows [y0, y1) of dx and this chunk's share of dk (the rows of h2 it owns: [y0, y1)).
template <int KT>
void BackwardChunk(const Geometry& g, const float* x, const float* kernel, const float* dy, float* dx,
                   float* dk, int64_t b, int64_t y0, int64_t y1) {
  const int64_t c = g.channels, n = g.RowFloats(), p = g.pad;
  Ring a1(g), dh2(g);
  const float* rows[kMaxK];
  std::fill(dk, dk + g.k * g.k * c, 0.0f);
  const int64_t r_start = y0 - p, r_end = y1 + p;  // rows of dh2 that rows [y0, y1) of dx need
  for (int64_t r = r_start - p; r < r_start + p; ++r) LoadSilu(g, x, b, r, a1);
  for (int64_t r = r_start; r < r_end; ++r) {
    LoadSilu(g, x, b, r + p, a1);
    float* d = dh2.Interior(r);
    if (r >= 0 && r < g.height) {
      // dh2 = dy * SiLU'(h2), h2 = the convolution recomputed.
      for (int64_t i = 0; i < g.k; ++i) rows[i] = a1.Row(r - p + i);
      const float* g2 = dy + (b * g.height + r) * n;
      CorrelateRow<KT>(g, rows, 0, 1, kernel, [&](int64_t xx, int64_t ch, auto h2) {
        using T = decltype(h2);
        Put(d + xx * c + ch, Get<T>(g2 + xx * c + ch) * SiluGrad(h2));
      });
      if (r >= y0 && r < y1) AccumulateKernelGrad<KT>(g, rows, d, dk);
    } else {
      std::memset(d, 0, n * sizeof(float));
    }
    const int64_t u = r - p;  // the dx row whose dh2 rows [u - p, u + p] are now all in the ring
    if (u < y0 || u >= y1) continue;
    // dx = SiLU'(h1) * (the transposed correlation of dh2: flipped taps, columns x - j + p of dh2).
    for (int64_t i = 0; i < g.k; ++i) rows[i] = dh2.Row(u - i + p);
    const float* h1 = x + (b * g.height + u) * n;
    float* out = dx + (b * g.height + u) * n;
    CorrelateRow<KT>(g, rows, 2 * p, -1, kernel, [&](int64_t xx, int64_t ch, auto da1) {
      using T = decltype(da1);
      Put(out + xx * c + ch, da1 * SiluGrad(Get<T>(h1 + xx * c + ch)));
    });
  }
}

ffi::Error CheckShapes(const ffi::Buffer<ffi::F32>& x, const ffi::Buffer<ffi::F32>& kernel, Geometry& g) {
  const auto xd = x.dimensions();
  const auto kd = kernel.dimensions();
  if (xd.size() != 4 || kd.size() != 3 || kd[0] != kd[1] || kd[0] % 2 == 0 || kd[0] > kMaxK || kd[2] != xd[3]) {
    return ffi::Error::InvalidArgument("silu_depthwise_silu: x must be (B, H, W, C) and kernel (k, k, C), k odd and at most 7");
  }
  g = Geometry{xd[0], xd[1], xd[2], xd[3], kd[0], kd[0] / 2};
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                   ffi::ResultBuffer<ffi::F32> y) {
  Geometry g;
  if (ffi::Error e = CheckShapes(x, kernel, g); e.failure()) return e;
  const float *xp = x.typed_data(), *kp = kernel.typed_data();
  float* yp = y->typed_data();
  const int64_t bands = g.Bands();
  ParallelFor(pool, g.batch * bands, [&](int64_t i) {
    const int64_t b = i / bands, band = i % bands;
    const int64_t y0 = g.BandStart(band), y1 = g.BandStart(band + 1);
    if (g.k == 3) {
      ForwardChunk<3>(g, xp, kp, yp, b, y0, y1);
    } else if (g.k == 5) {
      ForwardChunk<5>(g, xp, kp, yp, b, y0, y1);
    } else {
      ForwardChunk<0>(g, xp, kp, yp, b, y0, y1);
    }
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                    ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dk) {
  Geometry g;
  if (ffi::Error e = CheckShapes(x, kernel, g); e.failure()) return e;
  const float *xp = x.typed_data(), *kp = kernel.typed_data(), *dyp = dy.typed_data();
  float *dxp = dx->typed_data(), *dkp = dk->typed_data();
  const int64_t bands = g.Bands(), chunks = g.batch * bands, kk = g.k * g.k * g.channels;
  std::vector<float> partial(chunks * kk);
  ParallelFor(pool, chunks, [&](int64_t i) {
    const int64_t b = i / bands, band = i % bands;
    const int64_t y0 = g.BandStart(band), y1 = g.BandStart(band + 1);
    float* dk_part = partial.data() + i * kk;
    if (g.k == 3) {
      BackwardChunk<3>(g, xp, kp, dyp, dxp, dk_part, b, y0, y1);
    } else if (g.k == 5) {
      BackwardChunk<5>(g, xp, kp, dyp, dxp, dk_part, b, y0, y1);
    } else {
      BackwardChunk<0>(g, xp, kp, dyp, dxp, dk_part, b, y0, y1);
    }
  });
  std::copy(partial.begin(), partial.begin() + kk, dkp);
  for (int64_t i = 1; i < chunks; ++i) {
    const float* src = partial.data() + i * kk;
    for (int64_t j = 0; j < kk; ++j) dkp[j] += src[j];
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(HatnetSiluDepthwiseSiluFwd, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(HatnetSiluDepthwiseSiluBwd, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
