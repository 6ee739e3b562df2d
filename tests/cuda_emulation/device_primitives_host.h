// Host stand-ins for csrc/device_primitives.cuh and for the CUDA built-ins that the kernels of
// csrc/attention_importance_cuda.cuh, csrc/zip_tokens_cuda.cuh and csrc/zip_apply_cuda.cuh use, so
// that those kernels compile with a C++ compiler and run on the CPU, one thread at a time in an
// adversarial order (block_scheduler.h says how, and what fails there):
//
// - __syncthreads waits for the block's threads that have not exited; __syncwarp, the shuffles
//   (__shfl_xor_sync, __shfl_up_sync, __shfl_down_sync), __match_any_sync and the m16n8k16 product
//   wait for the lanes of their mask. Only the barriers order memory under ThreadSanitizer.
// - atomicAdd and atomicMax on integers are relaxed std::atomic_ref operations, as on the GPU
//   (the kernels use them on integers only).
// - __fadd_rn, __fmul_rn, __fdiv_rn and __fsqrt_rn are the IEEE float32 operations (compile the
//   emulation with -ffp-contract=off so that no product is fused into a sum).
// - load_vector and store_vector check the alignment a 16-byte (or float4) access needs on the GPU.
// - A cp.async copy's destination is undefined from its issue to its wait, as on the GPU, where the
//   copy lands at any time between: it becomes poison when the copy is issued (so a buffer refilled
//   while other threads still read it is poison to them, and a write ThreadSanitizer sees) and
//   receives the data only when cp_async_wait releases the copy's group (so data read before its
//   wait, or before the barrier after it, is still the poison).
// - Shared memory, static and dynamic, starts every block as 0xff bytes (NaN as float32, bfloat16
//   and float16), so reading anything no thread wrote shows up as NaN in the results; the dynamic
//   shared memory is exactly the launch's size, so AddressSanitizer reports an access beyond it.
// - The tensor-core product takes each lane's fragments in PTX's documented m16n8k16 layout,
//   multiplies exactly (float64) and rounds each accumulator once.
// Include this header before the kernels' headers: it defines the include guard of
// csrc/device_primitives.cuh, which is then skipped.
#pragma once

#define VISIONZIP_DEVICE_PRIMITIVES_CUH

#include "block_scheduler.h"
#include "exact_storage.h"

#include <math.h>

#include <cmath>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <vector>

#define __global__
#define __host__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__
#define __align__(n) alignas(n)
#define __shared__ static thread_local  // one copy per block: each block runs on its own OS thread

struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};
struct alignas(16) float4 {
  float x, y, z, w;
};

namespace emulation {

inline int lane() { return static_cast<int>(current().thread.x % 32); }

// Runs `kernel()` as every thread of every block of `grid`, with `shared_bytes` of dynamic shared
// memory (block_scheduler.h: order, poison, checks).
inline void launch(Index3 grid, int threads, int shared_bytes, const std::function<void()>& kernel) {
  const AlignedBytes shared = aligned_bytes(static_cast<size_t>(shared_bytes));
  launch_blocks(grid, threads, shared.get(), static_cast<size_t>(shared_bytes), kernel);
}

inline float half_to_float(uint16_t bits) {
  const int sign = bits >> 15, exponent = (bits >> 10) & 0x1f, mantissa = bits & 0x3ff;
  float magnitude;
  if (exponent == 0) {
    magnitude = ldexpf(static_cast<float>(mantissa), -24);
  } else if (exponent == 31) {
    magnitude = mantissa ? NAN : INFINITY;
  } else {
    magnitude = ldexpf(static_cast<float>(mantissa | 0x400), exponent - 25);
  }
  return sign ? -magnitude : magnitude;
}

inline float bits_to_float(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, 4);
  return value;
}

}  // namespace emulation

#define threadIdx (::emulation::current().thread)
#define blockIdx (::emulation::current().block)
#define blockDim (::emulation::current().block_dim)

inline void __syncthreads(std::source_location where = std::source_location::current()) {
  auto& run = *emulation::BlockRun::running();
  [[maybe_unused]] char* order = run.arrive(emulation::Wait::kBlockBarrier, where);
#if EMULATION_TSAN
  __tsan_release(order);
#endif
  run.yield();
#if EMULATION_TSAN
  __tsan_acquire(order);
#endif
}

namespace emulation {

// The running lane arrives at warp operation `op` over `mask`; returns once every lane of the mask
// has arrived and `resolve` has computed their results. Only __syncwarp orders memory.
inline void warp_op(WarpOp op, unsigned int mask, std::source_location where, Resolve resolve) {
  auto& run = *BlockRun::running();
  [[maybe_unused]] char* order = run.arrive(Wait::kWarp, where);
  {
    HarnessAccess access;
    Fiber& f = current();
    f.op = op;
    f.mask = mask;
    f.resolve = resolve;
  }
#if EMULATION_TSAN
  if (op == WarpOp::kSyncwarp) __tsan_release(order);
#endif
  run.yield();
#if EMULATION_TSAN
  if (op == WarpOp::kSyncwarp) __tsan_acquire(order);
#endif
}

// Each lane of the mask receives the word of its source lane (its own where the source is outside
// the warp, as __shfl_up_sync and __shfl_down_sync do); a source lane outside the mask is an error.
inline void resolve_shuffle(Fiber* const (&lanes)[32], unsigned int) {
  for (Fiber* f : lanes) {
    if (!f) continue;
    const int from = f->source_lane;
    if (from < 0 || from >= 32) {
      f->word_out = f->word_in;
    } else if (!lanes[from]) {
      throw std::runtime_error("emulation: a shuffle reads a lane outside its mask: " + describe(*f));
    } else {
      f->word_out = lanes[from]->word_in;
    }
  }
}

inline int64_t shuffle(int64_t value, int source_lane, unsigned int mask, std::source_location where) {
  {
    HarnessAccess access;
    current().word_in = value;
    current().source_lane = source_lane;
  }
  warp_op(WarpOp::kShuffle, mask, where, resolve_shuffle);
  HarnessAccess access;
  return current().word_out;
}

}  // namespace emulation

inline void __syncwarp(unsigned int mask = 0xffffffffu, std::source_location where = std::source_location::current()) {
  emulation::warp_op(emulation::WarpOp::kSyncwarp, mask, where, nullptr);
}

inline int __shfl_up_sync(unsigned int mask, int value, int delta,
                          std::source_location where = std::source_location::current()) {
  return static_cast<int>(emulation::shuffle(value, emulation::lane() - delta, mask, where));
}

inline int __shfl_down_sync(unsigned int mask, int value, int delta,
                            std::source_location where = std::source_location::current()) {
  return static_cast<int>(emulation::shuffle(value, emulation::lane() + delta, mask, where));
}

inline float __shfl_xor_sync(unsigned int mask, float value, int lane_mask,
                             std::source_location where = std::source_location::current()) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  const auto out = static_cast<uint32_t>(emulation::shuffle(bits, (emulation::lane() ^ lane_mask) & 31, mask, where));
  std::memcpy(&value, &out, 4);
  return value;
}

// The lanes of the mask whose `value` equals this lane's, as a bit mask.
inline unsigned int __match_any_sync(unsigned int mask, int value,
                                     std::source_location where = std::source_location::current()) {
  {
    emulation::HarnessAccess access;
    emulation::current().word_in = value;
  }
  emulation::warp_op(emulation::WarpOp::kMatch, mask, where, [](emulation::Fiber* const (&lanes)[32], unsigned) {
    for (emulation::Fiber* f : lanes) {
      if (!f) continue;
      unsigned int peers = 0;
      for (int l = 0; l < 32; ++l) {
        if (lanes[l] && lanes[l]->word_in == f->word_in) peers |= 1u << l;
      }
      f->word_out = peers;
    }
  });
  emulation::HarnessAccess access;
  return static_cast<unsigned int>(emulation::current().word_out);
}

inline int __popc(unsigned int bits) { return __builtin_popcount(bits); }
inline int __ffs(unsigned int bits) { return __builtin_ffs(static_cast<int>(bits)); }

inline int atomicAdd(int* address, int value) { return std::atomic_ref<int>(*address).fetch_add(value, std::memory_order_relaxed); }
inline unsigned int atomicAdd(unsigned int* address, unsigned int value) {
  return std::atomic_ref<unsigned int>(*address).fetch_add(value, std::memory_order_relaxed);
}
inline unsigned long long atomicMax(unsigned long long* address, unsigned long long value) {
  std::atomic_ref<unsigned long long> target(*address);
  unsigned long long old = target.load(std::memory_order_relaxed);
  while (old < value && !target.compare_exchange_weak(old, value, std::memory_order_relaxed)) {
  }
  return old;
}

inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline unsigned int __float_as_uint(float value) {
  unsigned int bits;
  std::memcpy(&bits, &value, 4);
  return bits;
}

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

namespace visionzip::cuda {

inline float to_float(float value) { return value; }
inline float to_float(__half value) { return emulation::half_to_float(value.bits); }
inline float to_float(__nv_bfloat16 value) { return emulation::bits_to_float(static_cast<uint32_t>(value.bits) << 16); }

template <typename T>
float load_float(const T* ptr) {
  return to_float(*ptr);
}

template <typename T>
void load_floats16(const T* ptr, float (&out)[16 / sizeof(T)]) {
  if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) throw std::runtime_error("misaligned 16-byte load");
  for (size_t i = 0; i < 16 / sizeof(T); ++i) out[i] = to_float(ptr[i]);
}

template <typename T>
T from_float(float value);

template <>
inline float from_float<float>(float value) {
  return value;
}

template <>
inline __half from_float<__half>(float value) {
  const _Float16 rounded = static_cast<_Float16>(value);  // IEEE binary16, to nearest even
  __half out;
  std::memcpy(&out.bits, &rounded, 2);
  return out;
}

template <>
inline __nv_bfloat16 from_float<__nv_bfloat16>(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  if (std::isnan(value)) return {0x7fc0};
  bits += 0x7fffu + ((bits >> 16) & 1u);  // to nearest, ties to even
  return {static_cast<uint16_t>(bits >> 16)};
}

template <typename V>
void check_vector_alignment(const V* ptr) {
  if (reinterpret_cast<uintptr_t>(ptr) % alignof(V) != 0) throw std::runtime_error("misaligned vector access");
}

template <typename V>
V load_vector(const V* ptr) {
  check_vector_alignment(ptr);
  return *ptr;
}

template <typename V>
void store_vector(V* ptr, const V& value) {
  check_vector_alignment(ptr);
  *ptr = value;
}

inline unsigned char* dynamic_shared_bytes() { return emulation::BlockRun::running()->dynamic_shared(); }

inline void cp_async(void* dst, const void* src, int src_bytes, int bytes) {
  if (reinterpret_cast<uintptr_t>(dst) % bytes != 0 || (src_bytes > 0 && reinterpret_cast<uintptr_t>(src) % bytes != 0)) {
    throw std::runtime_error("misaligned cp.async");
  }
  std::memset(dst, 0xff, bytes);
  emulation::current().groups.back().push_back({dst, src, src_bytes, bytes});
}

inline void cp_async_16(void* dst, const void* src, int src_bytes) { cp_async(dst, src, src_bytes, 16); }
inline void cp_async_4(void* dst, const void* src, int src_bytes) { cp_async(dst, src, src_bytes, 4); }
inline void cp_async_commit() { emulation::current().groups.emplace_back(); }

template <int kPending>
void cp_async_wait() {
  auto& groups = emulation::current().groups;
  const size_t committed = groups.size() - 1;  // the open group is not waited for
  const size_t release = committed > kPending ? committed - kPending : 0;
  for (size_t g = 0; g < release; ++g) {
    for (const auto& copy : groups[g]) {
      std::memset(copy.dst, 0, copy.bytes);
      if (copy.src_bytes > 0) std::memcpy(copy.dst, copy.src, copy.src_bytes);
    }
  }
  groups.erase(groups.begin(), groups.begin() + static_cast<std::ptrdiff_t>(release));
}

// The warp's m16n8k16 product: the fragments of all 32 lanes make A (16 x 16) and B (16 x 8).
template <typename T>
void resolve_mma(emulation::Fiber* const (&lanes)[32], unsigned int) {
  const auto element = [](uint32_t pair, int high) {
    const auto bits = static_cast<uint16_t>(high ? pair >> 16 : pair & 0xffff);
    return static_cast<double>(to_float(T{bits}));
  };
  double A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t2 = 2 * (l % 4);
    for (int e = 0; e < 2; ++e) {
      A[g][t2 + e] = element(lanes[l]->a[0], e);
      A[g + 8][t2 + e] = element(lanes[l]->a[1], e);
      A[g][t2 + 8 + e] = element(lanes[l]->a[2], e);
      A[g + 8][t2 + 8 + e] = element(lanes[l]->a[3], e);
      B[t2 + e][g] = element(lanes[l]->b[0], e);
      B[t2 + 8 + e][g] = element(lanes[l]->b[1], e);
    }
  }
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t2 = 2 * (l % 4);
    for (int i = 0; i < 4; ++i) {
      const int row = g + 8 * (i / 2), column = t2 + i % 2;
      double sum = lanes[l]->acc[i];
      for (int k = 0; k < 16; ++k) sum += A[row][k] * B[k][column];
      lanes[l]->acc[i] = static_cast<float>(sum);
    }
  }
}

template <typename T>
void mma_16x8x16(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                 std::source_location where = std::source_location::current()) {
  {
    emulation::HarnessAccess access;
    emulation::Fiber& f = emulation::current();
    std::copy(a, a + 4, f.a);
    std::copy(b, b + 2, f.b);
    std::copy(acc, acc + 4, f.acc);
  }
  emulation::warp_op(emulation::WarpOp::kMma, 0xffffffffu, where, resolve_mma<T>);
  emulation::HarnessAccess access;
  std::copy(emulation::current().acc, emulation::current().acc + 4, acc);
}

}  // namespace visionzip::cuda
