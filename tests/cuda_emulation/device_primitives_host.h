// Host stand-ins for csrc/device_primitives.cuh and for the CUDA built-ins that the kernels of
// csrc/attention_importance_cuda.cuh, csrc/zip_tokens_cuda.cuh and csrc/zip_apply_cuda.cuh use, so
// that those kernels compile with a C++ compiler and run on the CPU: every CUDA thread of a block is
// an std::thread, blocks run one after another.
//
// - __syncthreads is a barrier of the block's threads; a thread that returns leaves it (as exited
//   threads do on the GPU). __syncwarp is the same barrier for the warp's threads.
// - The warp shuffles (__shfl_xor_sync, __shfl_up_sync, __shfl_down_sync), __match_any_sync and the
//   m16n8k16 product exchange values through a per-warp buffer between two barriers of the warp's
//   32 threads, so a warp that does not arrive whole deadlocks the test.
// - atomicAdd and atomicMax on integers are std::atomic_ref operations: their results do not depend
//   on the threads' order, as on the GPU (the kernels use them on integers only).
// - __fadd_rn, __fmul_rn, __fdiv_rn and __fsqrt_rn are the IEEE float32 operations (compile the
//   emulation with -ffp-contract=off so that no product is fused into a sum).
// - load_vector and store_vector check the alignment a 16-byte (or float4) access needs on the GPU.
// - cp.async copies are queued per thread and run only when cp_async_wait releases their group,
//   so data read before its wait (or before the barrier after it) is still the poison.
// - Dynamic shared memory starts as 0xff bytes (NaN as float32, bfloat16 and float16), so reading
//   anything no thread wrote shows up as NaN in the results.
// - The tensor-core product takes each lane's fragments in PTX's documented m16n8k16 layout,
//   multiplies exactly (float64) and rounds each accumulator once.
// Include this header before the kernels' headers: it defines the include guard of
// csrc/device_primitives.cuh, which is then skipped.
#pragma once

#define VISIONZIP_DEVICE_PRIMITIVES_CUH

#include <math.h>

#include <cmath>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

#define __global__
#define __host__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__
#define __align__(n) alignas(n)
#define __shared__ static  // one array per kernel instantiation, shared by the block's threads

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

struct Index3 {
  unsigned int x, y, z;
};

struct Warp {
  explicit Warp(int lanes) : barrier(lanes) {}
  std::barrier<> barrier;
  float values[32];
  int64_t words[32];
  uint32_t a[32][4], b[32][2];
};

struct Block {
  Block(int threads, int shared_bytes)
      : barrier(threads), shared(static_cast<size_t>(shared_bytes) + 16, 0xff) {
    for (int w = 0; w < (threads + 31) / 32; ++w) warps.push_back(std::make_unique<Warp>(std::min(32, threads - 32 * w)));
  }
  std::barrier<> barrier;
  std::vector<std::unique_ptr<Warp>> warps;
  std::vector<unsigned char> shared;
};

struct PendingCopy {
  void* dst;
  const void* src;
  int src_bytes, bytes;
};

struct ThreadState {
  Index3 thread{0, 0, 0}, block{0, 0, 0}, block_dim{0, 0, 0};
  Block* owner = nullptr;
  std::vector<std::vector<PendingCopy>> groups{{}};  // the last group is still open
};

inline thread_local ThreadState state;

inline Warp& warp() { return *state.owner->warps[state.thread.x / 32]; }
inline int lane() { return static_cast<int>(state.thread.x % 32); }

// Runs `kernel()` as every thread of every block of `grid`, blocks in order.
inline void launch(Index3 grid, int threads, int shared_bytes, const std::function<void()>& kernel) {
  for (unsigned int by = 0; by < grid.y; ++by) {
    for (unsigned int bx = 0; bx < grid.x; ++bx) {
      Block block(threads, shared_bytes);
      std::vector<std::thread> workers;
      for (int t = 0; t < threads; ++t) {
        workers.emplace_back([&, t] {
          state = ThreadState{};
          state.thread = {static_cast<unsigned int>(t), 0, 0};
          state.block = {bx, by, 0};
          state.block_dim = {static_cast<unsigned int>(threads), 1, 1};
          state.owner = &block;
          kernel();
          block.warps[t / 32]->barrier.arrive_and_drop();
          block.barrier.arrive_and_drop();
        });
      }
      for (auto& worker : workers) worker.join();
    }
  }
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

#define threadIdx (::emulation::state.thread)
#define blockIdx (::emulation::state.block)
#define blockDim (::emulation::state.block_dim)

inline void __syncthreads() { emulation::state.owner->barrier.arrive_and_wait(); }
inline void __syncwarp(unsigned int = 0xffffffffu) { emulation::warp().barrier.arrive_and_wait(); }

namespace emulation {

// Every lane publishes `value`; returns what lane `source(lane)` published (its own value where
// the source is outside the warp).
template <typename Source>
int64_t exchange(int64_t value, Source source) {
  auto& w = warp();
  const int me = lane();
  w.words[me] = value;
  w.barrier.arrive_and_wait();
  const int from = source(me);
  const int64_t other = from >= 0 && from < 32 ? w.words[from] : value;
  w.barrier.arrive_and_wait();
  return other;
}

}  // namespace emulation

inline int __shfl_up_sync(unsigned int, int value, int delta) {
  return static_cast<int>(emulation::exchange(value, [&](int me) { return me - delta; }));
}

inline int __shfl_down_sync(unsigned int, int value, int delta) {
  return static_cast<int>(emulation::exchange(value, [&](int me) { return me + delta; }));
}

// The lanes whose `value` equals this lane's, as a bit mask.
inline unsigned int __match_any_sync(unsigned int, int value) {
  auto& w = emulation::warp();
  const int me = emulation::lane();
  w.words[me] = value;
  w.barrier.arrive_and_wait();
  unsigned int peers = 0;
  for (int l = 0; l < 32; ++l) {
    if (w.words[l] == value) peers |= 1u << l;
  }
  w.barrier.arrive_and_wait();
  return peers;
}

inline int __popc(unsigned int bits) { return __builtin_popcount(bits); }
inline int __ffs(unsigned int bits) { return __builtin_ffs(static_cast<int>(bits)); }

inline int atomicAdd(int* address, int value) { return std::atomic_ref<int>(*address).fetch_add(value); }
inline unsigned int atomicAdd(unsigned int* address, unsigned int value) {
  return std::atomic_ref<unsigned int>(*address).fetch_add(value);
}
inline unsigned long long atomicMax(unsigned long long* address, unsigned long long value) {
  std::atomic_ref<unsigned long long> target(*address);
  unsigned long long old = target.load();
  while (old < value && !target.compare_exchange_weak(old, value)) {
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

inline float __shfl_xor_sync(unsigned int, float value, int lane_mask) {
  auto& w = emulation::warp();
  const int lane = emulation::lane();
  w.values[lane] = value;
  w.barrier.arrive_and_wait();
  const float other = w.values[lane ^ lane_mask];
  w.barrier.arrive_and_wait();
  return other;
}

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

inline unsigned char* dynamic_shared_bytes() {
  auto& shared = emulation::state.owner->shared;
  const auto address = reinterpret_cast<uintptr_t>(shared.data());
  return shared.data() + (16 - address % 16) % 16;
}

inline void cp_async(void* dst, const void* src, int src_bytes, int bytes) {
  if (reinterpret_cast<uintptr_t>(dst) % bytes != 0 || (src_bytes > 0 && reinterpret_cast<uintptr_t>(src) % bytes != 0)) {
    throw std::runtime_error("misaligned cp.async");
  }
  emulation::state.groups.back().push_back({dst, src, src_bytes, bytes});
}

inline void cp_async_16(void* dst, const void* src, int src_bytes) { cp_async(dst, src, src_bytes, 16); }
inline void cp_async_4(void* dst, const void* src, int src_bytes) { cp_async(dst, src, src_bytes, 4); }
inline void cp_async_commit() { emulation::state.groups.emplace_back(); }

template <int kPending>
void cp_async_wait() {
  auto& groups = emulation::state.groups;
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

template <typename T>
void mma_16x8x16(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  auto& w = emulation::warp();
  const int lane = emulation::lane();
  for (int i = 0; i < 4; ++i) w.a[lane][i] = a[i];
  for (int i = 0; i < 2; ++i) w.b[lane][i] = b[i];
  w.barrier.arrive_and_wait();
  const auto element = [](uint32_t pair, int high) {
    const auto bits = static_cast<uint16_t>(high ? pair >> 16 : pair & 0xffff);
    return static_cast<double>(to_float(T{bits}));
  };
  double A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t2 = 2 * (l % 4);
    for (int e = 0; e < 2; ++e) {
      A[g][t2 + e] = element(w.a[l][0], e);
      A[g + 8][t2 + e] = element(w.a[l][1], e);
      A[g][t2 + 8 + e] = element(w.a[l][2], e);
      A[g + 8][t2 + 8 + e] = element(w.a[l][3], e);
      B[t2 + e][g] = element(w.b[l][0], e);
      B[t2 + 8 + e][g] = element(w.b[l][1], e);
    }
  }
  const int g = lane / 4, t2 = 2 * (lane % 4);
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i / 2), column = t2 + i % 2;
    double sum = acc[i];
    for (int k = 0; k < 16; ++k) sum += A[row][k] * B[k][column];
    acc[i] = static_cast<float>(sum);
  }
  w.barrier.arrive_and_wait();
}

}  // namespace visionzip::cuda
