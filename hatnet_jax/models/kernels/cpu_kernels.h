// What the native CPU kernels (silu_depthwise_silu.cc, native_attention.cc, group_norm.cc) share: the
// vector type, a vectorisable exp, and a deterministic parallel loop over XLA's intra-op thread pool.
// hatnet_jax/models/kernels/native.py builds each kernel with this directory on the include path.
#ifndef HATNET_JAX_MODELS_CPU_KERNELS_H_
#define HATNET_JAX_MODELS_CPU_KERNELS_H_

#include <algorithm>
#include <atomic>
#include <bit>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace hatnet_native {

namespace ffi = xla::ffi;

// Vectors of kLanes floats (GCC vector extensions), one machine register each, so that sums accumulate in
// registers: 16 with AVX-512, else 8 (AVX2's 256 bits; a 16-float vector there is two registers, which
// doubles every register block's needs).
#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;
#else
constexpr int64_t kLanes = 8;
#endif
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float)), aligned(sizeof(float))));
typedef int32_t VecI __attribute__((vector_size(kLanes * sizeof(int32_t)), aligned(sizeof(int32_t))));

// Unaligned loads and stores through a may_alias type of a float's alignment. Not memcpy: for AVX2, GCC 12
// copied a memcpy'd vector through the stack in 16-byte halves inside the attention kernel's product loop
// and spilled its accumulators; on a Zen 3 EPYC stage 1's window attention forward (hatnet_tiny, batch 16)
// took 59 ms with memcpy and 17 ms with these (XLA's path: 75 ms). AVX-512 code kept the loop in registers.
typedef float VecU __attribute__((vector_size(kLanes * sizeof(float)), aligned(sizeof(float)), may_alias));
inline Vec Load(const float* p) { return *reinterpret_cast<const VecU*>(p); }
inline void Store(float* p, Vec v) { *reinterpret_cast<VecU*>(p) = v; }
inline float Pow2(float n) { return std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23); }
inline Vec Pow2(Vec n) { return reinterpret_cast<Vec>((__builtin_convertvector(n, VecI) + 127) << 23); }

// exp(x) for float32 without libm (so that it vectorises): n = round(x / ln 2) (adding and subtracting
// 1.5 * 2^23 rounds to the nearest integer), r = x - n ln 2 (Cody-Waite), exp(r) by its degree-6 Taylor
// polynomial (relative error < 1e-7 for |r| <= ln2 / 2), times 2^n built in the exponent bits.
template <typename T>
inline T Exp(T x) {
  x = x < -87.0f ? T{} - 87.0f : x;
  x = x > 88.0f ? T{} + 88.0f : x;
  const T n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const T r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  T p = T{} + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * Pow2(n);
}

// Runs fn(0..n-1) on the calling thread and the XLA thread pool; returns when all have finished. Helpers
// that start after the work is gone find nothing to do; the shared state outlives this call for them.
template <typename Fn>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, Fn fn) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  auto* fn_ptr = &fn;  // used only while chunks remain, i.e. before this call returns
  auto work = [state, fn_ptr, n]() {
    for (int64_t i; (i = state->next.fetch_add(1)) < n;) {
      (*fn_ptr)(i);
      if (state->done.fetch_add(1) + 1 == n) {
        { std::lock_guard<std::mutex> lock(state->mu); }
        state->cv.notify_all();
      }
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule(decltype(work)(work));
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == n; });
}

}  // namespace hatnet_native

#endif  // HATNET_JAX_MODELS_CPU_KERNELS_H_
