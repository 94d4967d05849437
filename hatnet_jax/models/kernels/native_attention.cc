// H-MHSA's softmax attention, softmax(q k^T / sqrt(d)) v per head, and its gradient, as XLA FFI handlers for
// the CPU backend (hatnet_jax/models/kernels/fused_attention.py builds and registers them). Two forms:
//   - windows: a (B, H, W, 3C) map of fused [q|k|v][head][d] channels -> (B, H, W, C); each token attends to
//     the tokens of its window (window_h x window_w, partial windows at the bottom/right edge hold only the
//     real tokens: the masked semantics of attention.local_attention). A window of the whole map is plain
//     MHSA (grid size 1).
//   - global: queries (B, T, C) against keys and values (B, S, 2C) of [k|v][head][d] channels -> (B, T, C).
//
// Why hand-written: on XLA's CPU backend the windowed form is a pad, a window transpose and its inverse over
// the whole map, batched products of small matrices (64x64x48) that run 1.5-5x slower than PyTorch's bmm,
// and a softmax whose probabilities are saved for the backward pass (BENCHMARKS.md). Here each (image,
// window, head) is one task that gathers its q, k and v rows into small dense buffers, multiplies them with
// a register-blocked product, and writes its output rows in place. The backward pass saves nothing but the
// inputs: it recomputes the probabilities (as flash attention does) and forms dq, dk and dv per task.
//
// Determinism: each task is computed by one thread in a fixed order and writes rows no other task writes,
// so results are bitwise reproducible whatever the thread count.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_kernels.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace hatnet_native;

constexpr int64_t kQueryBlock = 64;  // queries per block against all of a task's keys
// The register block of a product: kRows rows x kCols vectors of C accumulate in registers, with room
// left for a row of B and the broadcast A value: 4 x 4 of AVX-512's 32 registers, 6 x 2 of AVX2's 16 (the
// usual 6x16 AVX2 micro-kernel).
#if defined(__AVX512F__)
constexpr int kRows = 4;
constexpr int kCols = 4;
#else
constexpr int kRows = 6;
constexpr int kCols = 2;
#endif
inline int64_t RoundUp(int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; }

// C[m, n] (+)= sum_k A(m, k) B[k, n] for m < MR and n < NV * kLanes, with A(m, k) = a[m * am + k * ak] and
// rows of B and C given by their strides; the MR x NV block of C stays in registers over k.
template <int MR, int NV>
inline void Block(int64_t depth, const float* a, int64_t am, int64_t ak, const float* b, int64_t ldb, float* c,
                  int64_t ldc, bool accumulate) {
  Vec acc[MR][NV];
  for (int m = 0; m < MR; ++m) {
    for (int v = 0; v < NV; ++v) acc[m][v] = accumulate ? Load(c + m * ldc + v * kLanes) : Vec{};
  }
  for (int64_t k = 0; k < depth; ++k) {
    Vec row[NV];
    for (int v = 0; v < NV; ++v) row[v] = Load(b + k * ldb + v * kLanes);
    for (int m = 0; m < MR; ++m) {
      const float s = a[m * am + k * ak];
      for (int v = 0; v < NV; ++v) acc[m][v] += s * row[v];
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int v = 0; v < NV; ++v) Store(c + m * ldc + v * kLanes, acc[m][v]);
  }
}

// Block<MR, nv> for 1 <= nv <= NV (the columns left may fill fewer than kCols vectors).
template <int MR, int NV = kCols>
inline void BlockCols(int64_t nv, int64_t depth, const float* a, int64_t am, int64_t ak, const float* b,
                      int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  if constexpr (NV > 1) {
    if (nv < NV) return BlockCols<MR, NV - 1>(nv, depth, a, am, ak, b, ldb, c, ldc, accumulate);
  }
  Block<MR, NV>(depth, a, am, ak, b, ldb, c, ldc, accumulate);
}

// BlockCols<mr> for 1 <= mr <= MR (the last rows may be fewer than kRows).
template <int MR = kRows>
inline void BlockRows(int64_t mr, int64_t nv, int64_t depth, const float* a, int64_t am, int64_t ak,
                      const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  if constexpr (MR > 1) {
    if (mr < MR) return BlockRows<MR - 1>(mr, nv, depth, a, am, ak, b, ldb, c, ldc, accumulate);
  }
  BlockCols<MR>(nv, depth, a, am, ak, b, ldb, c, ldc, accumulate);
}

// C (rows x cols, cols a multiple of kLanes) (+)= A (rows x depth, strided) B (depth x cols, row stride ldb).
void Product(int64_t rows, int64_t cols, int64_t depth, const float* a, int64_t am, int64_t ak, const float* b,
             int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  for (int64_t n = 0; n < cols; n += kCols * kLanes) {
    const int64_t nv = std::min<int64_t>(kCols, (cols - n) / kLanes);
    for (int64_t m = 0; m < rows; m += kRows) {
      BlockRows(std::min<int64_t>(kRows, rows - m), nv, depth, a + m * am, am, ak, b + n, ldb, c + m * ldc + n, ldc,
                accumulate);
    }
  }
}

// One task: queries at rows q + qoff[i] (i < t), keys and values at rows k + koff[j], v + koff[j] (j < s), d
// channels each; outputs (and the incoming gradient) at rows of the output layout, ooff[i].
struct Task {
  const float *q, *k, *v;
  const int64_t *qoff, *koff, *ooff;
  int64_t t, s, d;
  float scale;
};

// The task's scratch: dense copies padded to whole vectors (dp = d rounded up, sp = s rounded up). Padded
// channels stay zero: they are zeroed when the buffers are (re)made for a new (d, sp) and products write
// them only with sums of zeros. Keys past s are never read (transposed copies zero those columns).
struct Scratch {
  std::vector<float> k, kt, v, vt, q, p, o, dp, dk, dv;
  int64_t d = -1, sp = -1;
  void Prepare(const Task& task) {
    if (task.d == d && RoundUp(task.s) == sp) return;
    d = task.d;
    sp = RoundUp(task.s);
    const int64_t dp_ = RoundUp(d), s_ = sp;  // room for sp keys, so that a task with more keys (< sp) fits
    for (auto* buf : {&k, &v, &dk, &dv}) buf->assign(s_ * dp_, 0.0f);
    for (auto* buf : {&kt, &vt}) buf->assign(dp_ * sp, 0.0f);
    for (auto* buf : {&q, &o}) buf->assign(kQueryBlock * dp_, 0.0f);
    for (auto* buf : {&p, &dp}) buf->assign(kQueryBlock * sp, 0.0f);
  }
};

inline void CopyRow(float* dst, const float* src, int64_t n) {
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) Store(dst + c, Load(src + c));
  for (; c < n; ++c) dst[c] = src[c];
}

// rows x d values at base + offsets[i] -> dense (rows x dp), and optionally transposed (dp x sp, columns
// from rows on zeroed; written a row at a time, so that its stores are contiguous).
void Gather(const float* base, const int64_t* offsets, int64_t rows, int64_t d, int64_t dp, float* dense,
            float* transposed, int64_t sp) {
  for (int64_t i = 0; i < rows; ++i) CopyRow(dense + i * dp, base + offsets[i], d);
  if (transposed == nullptr) return;
  for (int64_t c = 0; c < d; ++c) {
    float* out = transposed + c * sp;
    const float* column = base + c;
    for (int64_t i = 0; i < rows; ++i) out[i] = column[offsets[i]];
    std::fill(out + rows, out + sp, 0.0f);
  }
}

void Scatter(const float* dense, int64_t dp, const int64_t* offsets, int64_t rows, int64_t d, float* base) {
  for (int64_t i = 0; i < rows; ++i) CopyRow(base + offsets[i], dense + i * dp, d);
}

// 0, 1, ..., kLanes - 1.
inline Vec Lane() {
  Vec v;
  for (int64_t i = 0; i < kLanes; ++i) v[i] = static_cast<float>(i);
  return v;
}

inline float Sum(Vec v) {
  float sum = 0.0f;
  for (int64_t i = 0; i < kLanes; ++i) sum += v[i];
  return sum;
}

// Scores of `rows` queries (scratch q) against the task's keys -> probabilities in scratch p (rows x sp);
// columns past s are zero.
void Probabilities(const Task& task, Scratch& w, int64_t rows) {
  const int64_t dp = RoundUp(task.d), sp = RoundUp(task.s);
  Product(rows, sp, dp, w.q.data(), dp, 1, w.kt.data(), sp, w.p.data(), sp, false);
  for (int64_t i = 0; i < rows; ++i) {
    float* row = w.p.data() + i * sp;
    for (int64_t j = task.s; j < sp; ++j) row[j] = -INFINITY;
    Vec top = Load(row);
    for (int64_t j = kLanes; j < sp; j += kLanes) {
      const Vec x = Load(row + j);
      top = top > x ? top : x;
    }
    float m = top[0];
    for (int64_t l = 1; l < kLanes; ++l) m = std::max(m, top[l]);
    // exp(scale * (score - max)): the scale is folded in (it is positive, so the maximum is the same). The
    // padded keys' exp (of -inf, clamped by Exp) is masked to zero.
    Vec sum{};
    for (int64_t j = 0; j < sp; j += kLanes) {
      Vec e = Exp(task.scale * (Load(row + j) - m));
      if (j + kLanes > task.s) e = Lane() < static_cast<float>(task.s - j) ? e : Vec{};
      Store(row + j, e);
      sum += e;
    }
    const float inv = 1.0f / Sum(sum);
    for (int64_t j = 0; j < sp; j += kLanes) Store(row + j, Load(row + j) * inv);
  }
}

void ForwardTask(const Task& task, float* out, Scratch& w) {
  const int64_t dp = RoundUp(task.d), sp = RoundUp(task.s);
  w.Prepare(task);
  Gather(task.k, task.koff, task.s, task.d, dp, w.k.data(), w.kt.data(), sp);
  Gather(task.v, task.koff, task.s, task.d, dp, w.v.data(), nullptr, 0);
  for (int64_t i0 = 0; i0 < task.t; i0 += kQueryBlock) {
    const int64_t rows = std::min(kQueryBlock, task.t - i0);
    Gather(task.q, task.qoff + i0, rows, task.d, dp, w.q.data(), nullptr, 0);
    Probabilities(task, w, rows);
    Product(rows, dp, task.s, w.p.data(), sp, 1, w.v.data(), dp, w.o.data(), dp, false);  // O = P V
    Scatter(w.o.data(), dp, task.ooff + i0, rows, task.d, out);
  }
}

// dq, dk, dv (in the layouts of q, k, v: offsets qoff, koff) from the incoming gradient dout (layout ooff).
void BackwardTask(const Task& task, const float* dout, float* dq, float* dk, float* dv, Scratch& w) {
  const int64_t dp = RoundUp(task.d), sp = RoundUp(task.s);
  w.Prepare(task);
  std::fill(w.dk.begin(), w.dk.begin() + task.s * dp, 0.0f);
  std::fill(w.dv.begin(), w.dv.begin() + task.s * dp, 0.0f);
  Gather(task.k, task.koff, task.s, task.d, dp, w.k.data(), w.kt.data(), sp);
  Gather(task.v, task.koff, task.s, task.d, dp, w.v.data(), w.vt.data(), sp);
  for (int64_t i0 = 0; i0 < task.t; i0 += kQueryBlock) {
    const int64_t rows = std::min(kQueryBlock, task.t - i0);
    Gather(task.q, task.qoff + i0, rows, task.d, dp, w.q.data(), nullptr, 0);
    Gather(dout, task.ooff + i0, rows, task.d, dp, w.o.data(), nullptr, 0);  // scratch o holds dO here
    Probabilities(task, w, rows);
    Product(rows, sp, dp, w.o.data(), dp, 1, w.vt.data(), sp, w.dp.data(), sp, false);  // dP = dO V^T
    // dS = P * (dP - rowsum(P * dP)), times the scale of the scores (kept in dp; zero past s, as P).
    for (int64_t i = 0; i < rows; ++i) {
      const float* p = w.p.data() + i * sp;
      float* g = w.dp.data() + i * sp;
      Vec dot{};
      for (int64_t j = 0; j < sp; j += kLanes) dot += Load(p + j) * Load(g + j);
      const float d = Sum(dot);
      for (int64_t j = 0; j < sp; j += kLanes) Store(g + j, task.scale * Load(p + j) * (Load(g + j) - d));
    }
    Product(task.s, dp, rows, w.p.data(), 1, sp, w.o.data(), dp, w.dv.data(), dp, true);   // dV += P^T dO
    Product(task.s, dp, rows, w.dp.data(), 1, sp, w.q.data(), dp, w.dk.data(), dp, true);  // dK += dS^T Q
    Product(rows, dp, task.s, w.dp.data(), sp, 1, w.k.data(), dp, w.q.data(), dp, false);  // dQ = dS K
    Scatter(w.q.data(), dp, task.qoff + i0, rows, task.d, dq);
  }
  Scatter(w.dk.data(), dp, task.koff, task.s, task.d, dk);
  Scatter(w.dv.data(), dp, task.koff, task.s, task.d, dv);
}

// Windows of a (B, H, W, 3C) map: task i = ((b * windows_h + wy) * windows_w + wx) * heads + head.
struct Windows {
  int64_t batch, height, width, channels, heads, wh, ww;
  int64_t WindowsH() const { return (height + wh - 1) / wh; }
  int64_t WindowsW() const { return (width + ww - 1) / ww; }
  int64_t Tasks() const { return batch * WindowsH() * WindowsW() * heads; }
  int64_t HeadDim() const { return channels / heads; }

  // Row offsets of the task's tokens in the qkv map (stride 3C) and in the output map (stride C); the
  // head's channel offset is added by the caller.
  void Offsets(int64_t i, std::vector<int64_t>& in, std::vector<int64_t>& out) const {
    const int64_t per_image = WindowsH() * WindowsW();
    const int64_t b = i / (per_image * heads), win = i / heads % per_image;
    const int64_t y0 = win / WindowsW() * wh, x0 = win % WindowsW() * ww;
    in.clear();
    out.clear();
    for (int64_t y = y0; y < std::min(height, y0 + wh); ++y) {
      for (int64_t x = x0; x < std::min(width, x0 + ww); ++x) {
        const int64_t token = (b * height + y) * width + x;
        in.push_back(token * 3 * channels);
        out.push_back(token * channels);
      }
    }
  }
};

ffi::Error CheckWindows(const ffi::Buffer<ffi::F32>& qkv, int64_t heads, int64_t wh, int64_t ww, Windows& g) {
  const auto dims = qkv.dimensions();
  if (dims.size() != 4 || dims[3] % 3 != 0 || heads < 1 || (dims[3] / 3) % heads != 0 || wh < 1 || ww < 1) {
    return ffi::Error::InvalidArgument(
        "window attention: qkv must be (B, H, W, 3C) with C a multiple of heads, and windows at least 1x1");
  }
  g = Windows{dims[0], dims[1], dims[2], dims[3] / 3, heads, wh, ww};
  return ffi::Error::Success();
}

Task WindowTask(const Windows& g, const float* qkv, int64_t i, const std::vector<int64_t>& in,
                const std::vector<int64_t>& out) {
  const int64_t head = i % g.heads, d = g.HeadDim(), n = static_cast<int64_t>(in.size());
  const int64_t c = head * d;
  return Task{qkv + c, qkv + g.channels + c, qkv + 2 * g.channels + c, in.data(), in.data(), out.data(),
              n, n, d, 1.0f / std::sqrt(static_cast<float>(d))};
}

ffi::Error WindowsForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv, ffi::ResultBuffer<ffi::F32> out,
                          int64_t heads, int64_t window_h, int64_t window_w) {
  Windows g;
  if (ffi::Error e = CheckWindows(qkv, heads, window_h, window_w, g); e.failure()) return e;
  const float* x = qkv.typed_data();
  float* y = out->typed_data();
  ParallelFor(pool, g.Tasks(), [&](int64_t i) {
    thread_local Scratch w;
    thread_local std::vector<int64_t> in, outs;
    g.Offsets(i, in, outs);
    const Task task = WindowTask(g, x, i, in, outs);
    ForwardTask(task, y + (task.q - x), w);  // the head's channel offset in the output: head * d
  });
  return ffi::Error::Success();
}

ffi::Error WindowsBackward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv, ffi::Buffer<ffi::F32> dout,
                           ffi::ResultBuffer<ffi::F32> dqkv, int64_t heads, int64_t window_h, int64_t window_w) {
  Windows g;
  if (ffi::Error e = CheckWindows(qkv, heads, window_h, window_w, g); e.failure()) return e;
  const float *x = qkv.typed_data(), *dy = dout.typed_data();
  float* dx = dqkv->typed_data();
  ParallelFor(pool, g.Tasks(), [&](int64_t i) {
    thread_local Scratch w;
    thread_local std::vector<int64_t> in, outs;
    g.Offsets(i, in, outs);
    const Task task = WindowTask(g, x, i, in, outs);
    const int64_t c = task.q - x;  // head * d
    BackwardTask(task, dy + c, dx + c, dx + g.channels + c, dx + 2 * g.channels + c, w);
  });
  return ffi::Error::Success();
}

// Global form: task i = b * heads + head.
struct Global {
  int64_t batch, queries, keys, channels, heads;
  int64_t HeadDim() const { return channels / heads; }
};

ffi::Error CheckGlobal(const ffi::Buffer<ffi::F32>& q, const ffi::Buffer<ffi::F32>& kv, int64_t heads, Global& g) {
  const auto qd = q.dimensions();
  const auto kd = kv.dimensions();
  if (qd.size() != 3 || kd.size() != 3 || kd[0] != qd[0] || kd[2] != 2 * qd[2] || heads < 1 || qd[2] % heads != 0 ||
      kd[1] < 1) {
    return ffi::Error::InvalidArgument(
        "global attention: q must be (B, T, C) and kv (B, S, 2C), S >= 1, with C a multiple of heads");
  }
  g = Global{qd[0], qd[1], kd[1], qd[2], heads};
  return ffi::Error::Success();
}

// Row offsets of image b's queries (stride C) and keys (stride 2C).
void GlobalOffsets(const Global& g, int64_t b, std::vector<int64_t>& qoff, std::vector<int64_t>& koff) {
  qoff.resize(g.queries);
  koff.resize(g.keys);
  for (int64_t t = 0; t < g.queries; ++t) qoff[t] = (b * g.queries + t) * g.channels;
  for (int64_t s = 0; s < g.keys; ++s) koff[s] = (b * g.keys + s) * 2 * g.channels;
}

Task GlobalTask(const Global& g, const float* q, const float* kv, int64_t head, const std::vector<int64_t>& qoff,
                const std::vector<int64_t>& koff) {
  const int64_t d = g.HeadDim(), c = head * d;
  return Task{q + c, kv + c, kv + g.channels + c, qoff.data(), koff.data(), qoff.data(), g.queries, g.keys, d,
              1.0f / std::sqrt(static_cast<float>(d))};
}

ffi::Error GlobalForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> kv,
                         ffi::ResultBuffer<ffi::F32> out, int64_t heads) {
  Global g;
  if (ffi::Error e = CheckGlobal(q, kv, heads, g); e.failure()) return e;
  const float *qp = q.typed_data(), *kvp = kv.typed_data();
  float* y = out->typed_data();
  ParallelFor(pool, g.batch * g.heads, [&](int64_t i) {
    thread_local Scratch w;
    thread_local std::vector<int64_t> qoff, koff;
    GlobalOffsets(g, i / g.heads, qoff, koff);
    const int64_t head = i % g.heads;
    ForwardTask(GlobalTask(g, qp, kvp, head, qoff, koff), y + head * g.HeadDim(), w);
  });
  return ffi::Error::Success();
}

ffi::Error GlobalBackward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> kv,
                          ffi::Buffer<ffi::F32> dout, ffi::ResultBuffer<ffi::F32> dq,
                          ffi::ResultBuffer<ffi::F32> dkv, int64_t heads) {
  Global g;
  if (ffi::Error e = CheckGlobal(q, kv, heads, g); e.failure()) return e;
  const float *qp = q.typed_data(), *kvp = kv.typed_data(), *dy = dout.typed_data();
  float *dqp = dq->typed_data(), *dkvp = dkv->typed_data();
  ParallelFor(pool, g.batch * g.heads, [&](int64_t i) {
    thread_local Scratch w;
    thread_local std::vector<int64_t> qoff, koff;
    GlobalOffsets(g, i / g.heads, qoff, koff);
    const int64_t head = i % g.heads, c = head * g.HeadDim();
    BackwardTask(GlobalTask(g, qp, kvp, head, qoff, koff), dy + c, dqp + c, dkvp + c, dkvp + g.channels + c, w);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(HatnetWindowAttentionFwd, WindowsForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("heads")
                                  .Attr<int64_t>("window_h")
                                  .Attr<int64_t>("window_w"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(HatnetWindowAttentionBwd, WindowsBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("heads")
                                  .Attr<int64_t>("window_h")
                                  .Attr<int64_t>("window_w"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(HatnetGlobalAttentionFwd, GlobalForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("heads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(HatnetGlobalAttentionBwd, GlobalBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("heads"));
