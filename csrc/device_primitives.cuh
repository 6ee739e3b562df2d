// The few device operations the attention_importance CUDA kernels are built from, each a thin
// wrapper over one PTX instruction or intrinsic: element loads converted to float32, asynchronous
// global -> shared copies (sm_80+), and the m16n8k16 tensor-core product with float32 accumulation.
//
// The kernels (attention_importance_cuda.cuh, zip_tokens_cuda.cuh, zip_apply_cuda.cuh) use nothing
// else of the device but threadIdx, blockIdx, blockDim, __syncthreads, __syncwarp, the warp
// shuffles, __match_any_sync, __popc, __ffs, integer atomics on shared memory, static __shared__
// arrays and float32 math (with the explicit round-to-nearest intrinsics), so that
// tests/cuda_emulation/device_primitives_host.h can stand in for this file and run them on the CPU.
// That is why this header has an include guard rather than #pragma once: the host version defines
// the same guard first.
#ifndef VISIONZIP_DEVICE_PRIMITIVES_CUH
#define VISIONZIP_DEVICE_PRIMITIVES_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace visionzip::cuda {

__device__ __forceinline__ float to_float(float value) { return value; }
__device__ __forceinline__ float to_float(__half value) { return __half2float(value); }
__device__ __forceinline__ float to_float(__nv_bfloat16 value) { return __bfloat162float(value); }

// One element at `ptr`, through the read-only data path, as float32.
template <typename T>
__device__ __forceinline__ float load_float(const T* ptr) {
  return to_float(__ldg(ptr));
}

// Element `i` of 16 bytes `bits` holding 16 / sizeof(T) consecutive elements (the first in the
// lowest bytes), as float32.
template <typename T>
__device__ __forceinline__ float unpack_float(const uint4& bits, int i);

template <>
__device__ __forceinline__ float unpack_float<float>(const uint4& bits, int i) {
  const uint32_t words[4] = {bits.x, bits.y, bits.z, bits.w};
  return __uint_as_float(words[i]);
}

template <>
__device__ __forceinline__ float unpack_float<__nv_bfloat16>(const uint4& bits, int i) {
  const uint32_t words[4] = {bits.x, bits.y, bits.z, bits.w};
  const uint32_t word = words[i / 2];
  return __uint_as_float(i % 2 == 0 ? word << 16 : word & 0xffff0000u);  // bfloat16 is float32's top half
}

template <>
__device__ __forceinline__ float unpack_float<__half>(const uint4& bits, int i) {
  const uint32_t words[4] = {bits.x, bits.y, bits.z, bits.w};
  const uint32_t word = words[i / 2];
  return __half2float(__ushort_as_half(static_cast<unsigned short>(i % 2 == 0 ? word & 0xffffu : word >> 16)));
}

// 16 bytes at `ptr` (16-byte aligned): 16 / sizeof(T) consecutive elements, as float32.
template <typename T>
__device__ __forceinline__ void load_floats16(const T* ptr, float (&out)[16 / sizeof(T)]) {
  const uint4 bits = __ldg(reinterpret_cast<const uint4*>(ptr));
#pragma unroll
  for (int i = 0; i < static_cast<int>(16 / sizeof(T)); ++i) out[i] = unpack_float<T>(bits, i);
}

// `value` rounded to T (to nearest, ties to even).
template <typename T>
__device__ __forceinline__ T from_float(float value);

template <>
__device__ __forceinline__ float from_float<float>(float value) {
  return value;
}

template <>
__device__ __forceinline__ __half from_float<__half>(float value) {
  return __float2half_rn(value);
}

template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float value) {
  return __float2bfloat16_rn(value);
}

// One load (store) of a whole V at `ptr`, aligned to alignof(V): a 16-byte vector access for the
// 16-byte packs of the zip_tokens kernels.
template <typename V>
__device__ __forceinline__ V load_vector(const V* ptr) {
  return *ptr;
}

template <typename V>
__device__ __forceinline__ void store_vector(V* ptr, const V& value) {
  *ptr = value;
}

// The block's dynamic shared memory, 16-byte aligned.
__device__ __forceinline__ unsigned char* dynamic_shared_bytes() {
  extern __shared__ __align__(16) unsigned char bytes[];
  return bytes;
}

// Asynchronous copy of `src_bytes` (0 or 16) bytes from global `src` (16-byte aligned, or any valid
// address when src_bytes is 0) to shared `dst` (16-byte aligned); the rest of the 16 bytes is zeroed.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) {
  const auto dst_shared = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst_shared), "l"(src), "r"(src_bytes)
               : "memory");
}

// The same for one 4-byte word (`src_bytes` 0 or 4; `src` and `dst` 4-byte aligned).
__device__ __forceinline__ void cp_async_4(void* dst, const void* src, int src_bytes) {
  const auto dst_shared = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst_shared), "l"(src), "r"(src_bytes)
               : "memory");
}

// Closes the group of copies this thread issued since the last commit.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most `kPending` of this thread's committed groups are still in flight. Other
// threads' copies are visible only after a __syncthreads() that follows their wait.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// acc += A B for one warp: A 16 x 16 (row-major), B 16 x 8 (column-major), float32 accumulators,
// T = __half or __nv_bfloat16; products are exact in float32. Fragments as PTX's m16n8k16 layout:
// with g = lane / 4 and t = lane % 4, a = {A[g][2t..], A[g+8][2t..], A[g][2t+8..], A[g+8][2t+8..]},
// b = {B[2t..][g], B[2t+8..][g]} (two consecutive k in each register, the lower in the low half),
// acc = {C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1]}.
template <typename T>
__device__ __forceinline__ void mma_16x8x16(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);

template <>
__device__ __forceinline__ void mma_16x8x16<__nv_bfloat16>(float (&acc)[4], const uint32_t (&a)[4],
                                                            const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <>
__device__ __forceinline__ void mma_16x8x16<__half>(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

}  // namespace visionzip::cuda

#endif  // VISIONZIP_DEVICE_PRIMITIVES_CUH
