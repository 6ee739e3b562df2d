// Device code of the CUDA C++ backend of visionzip::attention_importance, and the launch plan
// that picks its kernels. Launched by csrc/attention_importance_cuda.cu.
//
// With M queries (the CLS query alone, M = 1, or all N) the importance of key j in head (b, h) is
//   out[b, h, j] = (1 / M) * sum_{i < M} exp(s_ij - lse_i),   s_ij = (q_i . k_j) * scale,
// lse_i the log-sum-exp of query row i (given, or computed here). Every kernel works in base 2:
// t_ij = (q_i . k_j) * scale * log2(e), exp(s - lse) = exp2(t - lse * log2(e)); dot products,
// exponentials and sums are float32 (float16 and bfloat16 products are exact in float32; float32
// inputs are multiplied in IEEE float32 on the CUDA cores, never TF32).
//
// Kernels, all reading q and k [B, H, N, hd] through their element strides (64-bit offsets):
// - cls_row_kernel (M = 1): one block per (b, h) computes the CLS row's scores into `out`, reduces
//   their maximum and sum in the block, then rewrites `out` as the softmax; with `lse` given, one
//   sweep. Key rows are read as 16-byte vectors where the layout allows it (`kVec` elements).
// - mma_pass_kernel (M = N, float16/bfloat16, hd <= kMmaMaxHeadDim): tensor-core tiles. A block's
//   4 warps own 64 rows ("own" rows), stream 64-row tiles of the other operand through shared
//   memory (cp.async, double-buffered) and compute 16 x 64 score tiles per warp with m16n8k16
//   products. Row pass (own = queries, other = keys): online max and sum per query row, written as
//   lse. Column pass (own = keys, other = queries): sums of exp2(t - lse2) per key, divided by M.
// - simt_pass_kernel: the same two passes on the CUDA cores (float32 inputs, or hd > kMmaMaxHeadDim),
//   256 threads, each with a 4 x 4 block of every 64 x 64 score tile, head dims in chunks of 32.
//
// NaN and infinities follow the arithmetic, as in the other backends: a NaN score enters its row's
// sum (the maximum skips it, the sum does not), so the row's lse and then every column of the head
// become NaN; a +inf score gives inf - inf = NaN the same way. A row whose scores are all -inf gets
// lse = -inf (no term), which makes exp(-inf - (-inf)) = NaN in the column pass, as a softmax would.
#pragma once

#include "device_primitives.cuh"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace visionzip::cuda::importance {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// CLS kernel: 512 threads; 8 lanes share one key row (8 x 16 bytes = a 64-wide bfloat16 row in one
// load each), and each lane group has 8 keys in flight, so a block keeps up to 512 key rows of
// loads outstanding: the 577 keys of CLIP-L/336 (729 of SigLIP) take two rounds of memory latency.
constexpr int kClsThreads = 512;
constexpr int kClsLanesPerKey = 8;
constexpr int kClsKeysInFlight = 8;
constexpr int kClsGroups = kClsThreads / kClsLanesPerKey;

// Tiles of the two-pass kernels: 64 own rows per block, 64 other rows per step.
constexpr int kTileRows = 64;
// Tensor-core kernel: 4 warps of 16 own rows. Shared memory holds the own tile and two other
// tiles of kTileRows x (padded hd + 8) 16-bit elements: the 16 extra bytes per row keep the
// fragment loads of a warp on 32 different banks. hd <= 128 keeps that under 52 KiB.
constexpr int kMmaThreads = 128;
constexpr int kMmaMaxHeadDim = 128;
constexpr int kMmaRowPad = 8;
constexpr int kMmaColumnsPerThread = 16;  // 8 n-tiles x 2 columns per row slot
// CUDA-core kernel: 16 x 16 threads, each with rows ty + 16 i and columns tx + 16 j (i, j < 4):
// reads of a shared row are broadcast or on consecutive banks.
constexpr int kSimtThreads = 256;
constexpr int kSimtLanes = 16;
constexpr int kSimtPerThread = 4;
constexpr int kSimtDimChunk = 32;
constexpr int kSimtPitch = kTileRows + 1;  // odd pitch: the transposed stores hit 32 banks

// One [B, H, N, hd] input read through its strides (in elements).
template <typename T>
struct HeadsView {
  const T* data;
  int64_t stride_b, stride_h, stride_n, stride_d;

  __device__ const T* head(int64_t batch, int64_t head_index) const {
    return data + batch * stride_b + head_index * stride_h;
  }
};

// Per-row log-sum-exps [B, H, N] (natural log), read or written through their strides.
template <typename F>
struct LseView {
  F* data;
  int64_t stride_b, stride_h, stride_n;

  __device__ F* head(int64_t batch, int64_t head_index) const {
    return data + batch * stride_b + head_index * stride_h;
  }
};

struct ImportanceShape {
  int heads;
  int n_tokens;   // N: keys (and rows of the output)
  int n_queries;  // M: 1 with a CLS token, else N
  int head_dim;
  float scale_log2;  // softmax scale * log2(e)
};

// ---- Which kernels run: shared by the launcher and the CPU emulation of the tests ----

enum class KernelPath { kClsRow, kMma, kSimt };

struct LaunchPlan {
  KernelPath path;
  bool vectorised;        // cls_row_kernel: 16-byte loads; mma_pass_kernel: 16-byte cp.async
  int dim_padded;         // mma_pass_kernel: hd rounded up to 16
  int64_t row_blocks;     // two-pass kernels: ceil(N / kTileRows) blocks per head
  int shared_bytes;       // mma_pass_kernel: dynamic shared memory
};

// Whether a tensor's rows can be read in 16-byte pieces: unit hd stride, hd and every other stride
// (of a dimension longer than 1) a multiple of the elements in 16 bytes, a 16-byte aligned start.
inline bool rows_in_16_bytes(uintptr_t address, const int64_t (&sizes)[4], const int64_t (&strides)[4],
                             int element_bytes) {
  const int64_t per_vector = 16 / element_bytes;
  if (address % 16 != 0 || strides[3] != 1 || sizes[3] % per_vector != 0) return false;
  for (int dim = 0; dim < 3; ++dim) {
    if (sizes[dim] > 1 && strides[dim] % per_vector != 0) return false;
  }
  return true;
}

// The kernels of one call: the CLS row kernel with a CLS token, else the tensor-core passes for
// 16-bit inputs with hd <= kMmaMaxHeadDim and the CUDA-core passes otherwise.
inline LaunchPlan plan_launch(bool has_cls, bool sixteen_bit, int head_dim, int64_t n_tokens, bool vector_layout) {
  LaunchPlan plan{KernelPath::kSimt, vector_layout, 0, (n_tokens + kTileRows - 1) / kTileRows, 0};
  if (has_cls) {
    plan.path = KernelPath::kClsRow;
  } else if (sixteen_bit && head_dim <= kMmaMaxHeadDim) {
    plan.path = KernelPath::kMma;
    plan.dim_padded = (head_dim + 15) / 16 * 16;
    const int pitch = plan.dim_padded + kMmaRowPad;
    plan.shared_bytes = 3 * kTileRows * pitch * 2 + 2 * kTileRows * static_cast<int>(sizeof(float));
  }
  return plan;
}

// ---- Shared pieces ----

// The smaller of an index and the last valid one, as int64 (std::min is host code: nvcc takes it in
// device code only with --expt-relaxed-constexpr).
__device__ __forceinline__ int64_t at_most(int64_t index, int64_t last) { return index < last ? index : last; }

// Head of block x: blockIdx.x enumerates (batch, head) pairs.
struct BlockHead {
  int64_t index, batch, head;
};

__device__ __forceinline__ BlockHead block_head(int heads) {
  const int64_t index = blockIdx.x;
  return {index, index / heads, index % heads};
}

// The base of exponentials for a running maximum: 0 while the maximum is -inf (no finite score
// yet), so that exp2(-inf - reference) is 0 rather than NaN.
__device__ __forceinline__ float exp_reference(float maximum) { return maximum == -INFINITY ? 0.f : maximum; }

// (maximum, sum of exp2(t - maximum)) of a row, merged with another part of the same row.
__device__ __forceinline__ void merge_max_sum(float& maximum, float& sum, float other_maximum, float other_sum) {
  const float merged = fmaxf(maximum, other_maximum);
  const float reference = exp_reference(merged);
  sum = sum * exp2f(maximum - reference) + other_sum * exp2f(other_maximum - reference);
  maximum = merged;
}

// Adds base-2 scores `t` (-inf where absent) to a row's running (maximum, sum).
template <int kCount>
__device__ __forceinline__ void add_row_scores(float& maximum, float& sum, const float (&t)[kCount]) {
  float tile_max = -INFINITY;
#pragma unroll
  for (int c = 0; c < kCount; ++c) tile_max = fmaxf(tile_max, t[c]);
  const float merged = fmaxf(maximum, tile_max);
  const float reference = exp_reference(merged);
  float tile_sum = 0.f;
#pragma unroll
  for (int c = 0; c < kCount; ++c) tile_sum += exp2f(t[c] - reference);
  sum = sum * exp2f(maximum - reference) + tile_sum;
  maximum = merged;
}

// Every lane of the warp ends with the merge over the lanes whose index differs in `lane_mask`'s
// bits; the merges are symmetric, so they agree bit for bit.
template <int kLaneMask>
__device__ __forceinline__ void warp_merge_max_sum(float& maximum, float& sum) {
#pragma unroll
  for (int offset = 1; offset <= kLaneMask; offset <<= 1) {
    const float other_maximum = __shfl_xor_sync(0xffffffffu, maximum, offset);
    const float other_sum = __shfl_xor_sync(0xffffffffu, sum, offset);
    merge_max_sum(maximum, sum, other_maximum, other_sum);
  }
}

template <int kLaneMask>
__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
  for (int offset = 1; offset <= kLaneMask; offset <<= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

template <int kLaneMask>
__device__ __forceinline__ float warp_max(float value) {
#pragma unroll
  for (int offset = 1; offset <= kLaneMask; offset <<= 1) {
    value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  return value;
}

// The block's sum or maximum of one value per thread, returned to every thread; `partials` holds
// one float per warp. Ends with a barrier, so `partials` may be reused at once.
template <int kThreads, bool kMax>
__device__ __forceinline__ float block_reduce(float value, float* partials) {
  constexpr int kWarps = kThreads / 32;
  value = kMax ? warp_max<31>(value) : warp_sum<31>(value);
  if (threadIdx.x % 32 == 0) partials[threadIdx.x / 32] = value;
  __syncthreads();
  float total = partials[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) total = kMax ? fmaxf(total, partials[w]) : total + partials[w];
  __syncthreads();
  return total;
}

// Sum over one row's scores of the column pass: exp2(dots * scale_log2 - lse2) where the column
// (query) exists, 0 where it does not.
template <int kCount>
__device__ __forceinline__ float column_terms(const float (&dots)[kCount], const float (&lse2)[kCount],
                                              const bool (&present)[kCount], float scale_log2) {
  float sum = 0.f;
#pragma unroll
  for (int c = 0; c < kCount; ++c) sum += present[c] ? exp2f(fmaf(dots[c], scale_log2, -lse2[c])) : 0.f;
  return sum;
}

// ---- The CLS row ----

// Partial dot product of this lane's elements of query row `query` and key row `key`:
// elements chunk * kVec + e for chunks lane, lane + kClsLanesPerKey, ... (kVec = 1: one element
// per chunk, read through stride_d; kVec > 1: 16-byte vectors, stride_d = 1).
template <typename T, int kVec>
__device__ __forceinline__ void load_chunk(const T* row, int64_t stride_d, int chunk, float (&out)[kVec]) {
  if constexpr (kVec == 1) {
    out[0] = load_float(row + chunk * stride_d);
  } else {
    load_floats16(row + static_cast<int64_t>(chunk) * kVec, out);
  }
}

// out[b, h, :] = softmax of the CLS query's base-2 scores (or exp2(t - lse2) with lse given).
// One block per (b, h), kClsThreads threads; `out` is contiguous [B, H, N] float32 and serves as
// the scores' scratch. kVec: elements per load (16 / sizeof(T) with 16-byte rows, else 1).
template <typename T, int kVec>
__global__ void __launch_bounds__(kClsThreads)
    cls_row_kernel(HeadsView<T> q, HeadsView<T> k, LseView<const float> lse, ImportanceShape shape, float* out) {
  __shared__ float partials[kClsThreads / 32];
  const BlockHead bh = block_head(shape.heads);
  const T* query = q.head(bh.batch, bh.head);  // row 0: the CLS query
  const T* keys = k.head(bh.batch, bh.head);
  float* scores = out + bh.index * shape.n_tokens;
  const int group = threadIdx.x / kClsLanesPerKey;
  const int lane = threadIdx.x % kClsLanesPerKey;
  const int n_chunks = (shape.head_dim + kVec - 1) / kVec;
  const bool lse_given = lse.data != nullptr;
  const float lse2 = lse_given ? *lse.head(bh.batch, bh.head) * kLog2e : 0.f;

  float thread_max = -INFINITY;
  // The loop bounds are the same in every thread: the shuffles below see whole warps.
  for (int64_t first = 0; first < shape.n_tokens; first += kClsGroups * kClsKeysInFlight) {
    float dot[kClsKeysInFlight] = {};
    for (int chunk = lane; chunk < n_chunks; chunk += kClsLanesPerKey) {
      float query_part[kVec];
      load_chunk<T, kVec>(query, q.stride_d, chunk, query_part);
      // Every load issued before the first product: keys past N read the last key's row (no
      // branch between the loads) and their dot products are never stored.
      float key_part[kClsKeysInFlight][kVec];
#pragma unroll
      for (int u = 0; u < kClsKeysInFlight; ++u) {
        const int64_t key = at_most(first + u * kClsGroups + group, shape.n_tokens - 1);
        load_chunk<T, kVec>(keys + key * k.stride_n, k.stride_d, chunk, key_part[u]);
      }
#pragma unroll
      for (int u = 0; u < kClsKeysInFlight; ++u) {
#pragma unroll
        for (int e = 0; e < kVec; ++e) dot[u] = fmaf(query_part[e], key_part[u][e], dot[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < kClsKeysInFlight; ++u) {
      const float total = warp_sum<kClsLanesPerKey - 1>(dot[u]);
      const int64_t key = first + u * kClsGroups + group;
      if (lane == 0 && key < shape.n_tokens) {
        const float t = total * shape.scale_log2;
        if (lse_given) {
          scores[key] = exp2f(t - lse2);
        } else {
          scores[key] = t;
          thread_max = fmaxf(thread_max, t);
        }
      }
    }
  }
  if (lse_given) return;

  // The barriers in block_reduce also make every lane group's scores visible to the block.
  const float reference = exp_reference(block_reduce<kClsThreads, true>(thread_max, partials));
  float thread_sum = 0.f;
  for (int64_t key = threadIdx.x; key < shape.n_tokens; key += kClsThreads) {
    thread_sum += exp2f(scores[key] - reference);
  }
  const float row_lse2 = reference + log2f(block_reduce<kClsThreads, false>(thread_sum, partials));
  for (int64_t key = threadIdx.x; key < shape.n_tokens; key += kClsThreads) {
    scores[key] = exp2f(scores[key] - row_lse2);
  }
}

// ---- Tensor-core passes ----

// Copies rows first_row .. first_row + kTileRows - 1 of one head (n_rows rows, hd = head_dim) into
// a shared tile [kTileRows][pitch] of 16-bit elements, zero past the rows and past hd up to
// dim_padded. kVec: 16-byte cp.async per 8 elements (needs rows_in_16_bytes); otherwise element
// by element through the strides (plain loads and stores, complete when the call returns; an
// element out of range reads the last one in range, then stores 0).
template <typename T, bool kVec>
__device__ __forceinline__ void load_tile_16bit(uint16_t* tile, int pitch, const T* rows, int64_t stride_n,
                                                int64_t stride_d, int64_t first_row, int n_rows, int head_dim,
                                                int dim_padded) {
  const auto* source = reinterpret_cast<const uint16_t*>(rows);
  if constexpr (kVec) {
    const int chunks_per_row = dim_padded / 8;
    for (int index = threadIdx.x; index < kTileRows * chunks_per_row; index += kMmaThreads) {
      const int r = index / chunks_per_row;
      const int chunk = index % chunks_per_row;
      const int64_t row = first_row + r;
      const bool present = row < n_rows && chunk * 8 < head_dim;
      const uint16_t* from = present ? source + row * stride_n + chunk * 8 : source;
      cp_async_16(tile + r * pitch + chunk * 8, from, present ? 16 : 0);
    }
  } else {
    for (int index = threadIdx.x; index < kTileRows * dim_padded; index += kMmaThreads) {
      const int r = index / dim_padded;
      const int d = index % dim_padded;
      const int64_t row = first_row + r;
      const uint16_t value = source[at_most(row, n_rows - 1) * stride_n +
                                    at_most(d, head_dim - 1) * stride_d];
      tile[r * pitch + d] = row < n_rows && d < head_dim ? value : uint16_t{0};
    }
  }
}

// lse of queries first_row .. first_row + kTileRows - 1 into shared `tile` (cp.async; 0 past n_rows,
// where the columns are masked anyway).
__device__ __forceinline__ void load_lse_tile(float* tile, const float* lse, int64_t stride_n, int64_t first_row,
                                              int n_rows) {
  if (threadIdx.x < kTileRows) {
    const int64_t row = first_row + threadIdx.x;
    const bool present = row < n_rows;
    cp_async_4(tile + threadIdx.x, present ? lse + row * stride_n : lse, present ? 4 : 0);
  }
}

__device__ __forceinline__ uint32_t shared_pair(const uint16_t* tile, int offset) {
  return *reinterpret_cast<const uint32_t*>(tile + offset);
}

// acc[n] = 16 x 8 score block n of (16 own rows at `own`) x (other rows 8n .. 8n + 7 of `other`)^T,
// as m16n8k16 accumulator fragments, over dim_padded / 16 steps of 16 head-dim elements.
template <typename T>
__device__ __forceinline__ void warp_score_tile(const uint16_t* own, const uint16_t* other, int pitch,
                                                int dim_padded, float (&acc)[8][4]) {
  const int lane = threadIdx.x % 32;
  const int g = lane / 4;
  const int t2 = 2 * (lane % 4);
#pragma unroll
  for (int n = 0; n < 8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[n][e] = 0.f;
  }
  for (int d0 = 0; d0 < dim_padded; d0 += 16) {
    const uint32_t a[4] = {shared_pair(own, g * pitch + d0 + t2), shared_pair(own, (g + 8) * pitch + d0 + t2),
                           shared_pair(own, g * pitch + d0 + 8 + t2),
                           shared_pair(own, (g + 8) * pitch + d0 + 8 + t2)};
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      const uint32_t b[2] = {shared_pair(other, (8 * n + g) * pitch + d0 + t2),
                             shared_pair(other, (8 * n + g) * pitch + d0 + 8 + t2)};
      mma_16x8x16<T>(acc[n], a, b);
    }
  }
}

// kColumnPass false (row pass): own = queries, other = keys; lse_out[b, h, i] for the block's 64
// queries. kColumnPass true: own = keys, other = queries; out[b, h, j] for the block's 64 keys,
// reading lse_in. Grid (B * H, ceil(own rows / 64)), kMmaThreads threads, plan.shared_bytes.
template <typename T, bool kColumnPass, bool kVec>
__global__ void __launch_bounds__(kMmaThreads)
    mma_pass_kernel(HeadsView<T> q, HeadsView<T> k, LseView<const float> lse_in, LseView<float> lse_out,
                    ImportanceShape shape, int dim_padded, float* out) {
  const int pitch = dim_padded + kMmaRowPad;
  uint16_t* own_tile = reinterpret_cast<uint16_t*>(dynamic_shared_bytes());
  uint16_t* other_tiles = own_tile + kTileRows * pitch;                                  // two buffers
  float* lse_tiles = reinterpret_cast<float*>(other_tiles + 2 * kTileRows * pitch);  // two buffers

  const BlockHead bh = block_head(shape.heads);
  const HeadsView<T>& own = kColumnPass ? k : q;
  const HeadsView<T>& other = kColumnPass ? q : k;
  const int n_own = kColumnPass ? shape.n_tokens : shape.n_queries;
  const int n_other = kColumnPass ? shape.n_queries : shape.n_tokens;
  const T* own_rows = own.head(bh.batch, bh.head);
  const T* other_rows = other.head(bh.batch, bh.head);
  const float* lse_rows = kColumnPass ? lse_in.head(bh.batch, bh.head) : nullptr;
  const int64_t first_own = static_cast<int64_t>(blockIdx.y) * kTileRows;
  const int n_tiles = (n_other + kTileRows - 1) / kTileRows;

  const auto load_other = [&](int tile) {
    const int buffer = tile % 2;
    load_tile_16bit<T, kVec>(other_tiles + buffer * kTileRows * pitch, pitch, other_rows, other.stride_n,
                             other.stride_d, static_cast<int64_t>(tile) * kTileRows, n_other, shape.head_dim,
                             dim_padded);
    if constexpr (kColumnPass) {
      load_lse_tile(lse_tiles + buffer * kTileRows, lse_rows, lse_in.stride_n, static_cast<int64_t>(tile) * kTileRows,
                    n_other);
    }
  };
  load_tile_16bit<T, kVec>(own_tile, pitch, own_rows, own.stride_n, own.stride_d, first_own, n_own, shape.head_dim,
                           dim_padded);
  load_other(0);
  cp_async_commit();

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int t2 = 2 * (lane % 4);
  // Row slot s of this thread: own row warp * 16 + lane / 4 + 8 s; its columns in a tile:
  // 8 n + t2 + e, the fragment element acc[n][2 s + e].
  float row_max[2] = {-INFINITY, -INFINITY};  // row pass
  float row_sum[2] = {0.f, 0.f};              // row pass: sum of exp2(t - row_max); column pass: of exp2(t - lse2)

  for (int tile = 0; tile < n_tiles; ++tile) {
    if (tile + 1 < n_tiles) {
      load_other(tile + 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    float acc[8][4];
    warp_score_tile<T>(own_tile + warp * 16 * pitch, other_tiles + (tile % 2) * kTileRows * pitch, pitch, dim_padded,
                       acc);
    const int64_t first_column = static_cast<int64_t>(tile) * kTileRows;
    bool present[kMmaColumnsPerThread];
#pragma unroll
    for (int n = 0; n < 8; ++n) {
#pragma unroll
      for (int e = 0; e < 2; ++e) present[2 * n + e] = first_column + 8 * n + t2 + e < n_other;
    }
    if constexpr (kColumnPass) {
      const float* lse_tile = lse_tiles + (tile % 2) * kTileRows;
      float lse2[kMmaColumnsPerThread];
#pragma unroll
      for (int n = 0; n < 8; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) lse2[2 * n + e] = lse_tile[8 * n + t2 + e] * kLog2e;
      }
#pragma unroll
      for (int s = 0; s < 2; ++s) {
        float dots[kMmaColumnsPerThread];
#pragma unroll
        for (int n = 0; n < 8; ++n) {
#pragma unroll
          for (int e = 0; e < 2; ++e) dots[2 * n + e] = acc[n][2 * s + e];
        }
        row_sum[s] += column_terms(dots, lse2, present, shape.scale_log2);
      }
    } else {
#pragma unroll
      for (int s = 0; s < 2; ++s) {
        float t[kMmaColumnsPerThread];
#pragma unroll
        for (int n = 0; n < 8; ++n) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            t[2 * n + e] = present[2 * n + e] ? acc[n][2 * s + e] * shape.scale_log2 : -INFINITY;
          }
        }
        add_row_scores(row_max[s], row_sum[s], t);
      }
    }
    __syncthreads();  // every warp is done with this tile's buffer before it is refilled
  }

  // The four lanes of a quad hold the same two rows: merge them, then lane t = 0 writes.
#pragma unroll
  for (int s = 0; s < 2; ++s) {
    const int64_t row = first_own + warp * 16 + lane / 4 + 8 * s;
    if constexpr (kColumnPass) {
      const float sum = warp_sum<2 + 1>(row_sum[s]);
      if (lane % 4 == 0 && row < n_own) out[bh.index * shape.n_tokens + row] = sum / static_cast<float>(n_other);
    } else {
      warp_merge_max_sum<2 + 1>(row_max[s], row_sum[s]);
      if (lane % 4 == 0 && row < n_own) {
        lse_out.head(bh.batch, bh.head)[row * lse_out.stride_n] = (row_max[s] + log2f(row_sum[s])) * kLn2;
      }
    }
  }
}

// ---- CUDA-core passes ----

// Rows first_row .. first_row + kTileRows - 1 of one head, head-dim elements d0 .. d0 + 31, as
// float32 into chunk[d][row] (0 past the rows and past hd).
template <typename T>
__device__ __forceinline__ void load_chunk_transposed(float (*chunk)[kSimtPitch], const T* rows, int64_t stride_n,
                                                      int64_t stride_d, int64_t first_row, int n_rows, int d0,
                                                      int head_dim) {
  constexpr int kPerThread = kTileRows * kSimtDimChunk / kSimtThreads;
  float values[kPerThread];
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    // Elements past the rows or hd read the last one in range (no branch between the loads),
    // then count as 0.
    const int index = threadIdx.x + i * kSimtThreads;
    const int64_t row = first_row + index / kSimtDimChunk;
    const int d = d0 + index % kSimtDimChunk;
    const float value = load_float(rows + at_most(row, n_rows - 1) * stride_n +
                                   at_most(d, head_dim - 1) * stride_d);
    values[i] = row < n_rows && d < head_dim ? value : 0.f;
  }
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int index = threadIdx.x + i * kSimtThreads;
    chunk[index % kSimtDimChunk][index / kSimtDimChunk] = values[i];
  }
}

// The two passes of mma_pass_kernel on the CUDA cores, any dtype and hd. Grid (B * H,
// ceil(own rows / 64)), kSimtThreads threads, static shared memory.
template <typename T, bool kColumnPass>
__global__ void __launch_bounds__(kSimtThreads)
    simt_pass_kernel(HeadsView<T> q, HeadsView<T> k, LseView<const float> lse_in, LseView<float> lse_out,
                     ImportanceShape shape, float* out) {
  __shared__ float own_chunk[kSimtDimChunk][kSimtPitch];
  __shared__ float other_chunk[kSimtDimChunk][kSimtPitch];
  __shared__ float lse_tile[kTileRows];

  const BlockHead bh = block_head(shape.heads);
  const HeadsView<T>& own = kColumnPass ? k : q;
  const HeadsView<T>& other = kColumnPass ? q : k;
  const int n_own = kColumnPass ? shape.n_tokens : shape.n_queries;
  const int n_other = kColumnPass ? shape.n_queries : shape.n_tokens;
  const T* own_rows = own.head(bh.batch, bh.head);
  const T* other_rows = other.head(bh.batch, bh.head);
  const float* lse_rows = kColumnPass ? lse_in.head(bh.batch, bh.head) : nullptr;
  const int64_t first_own = static_cast<int64_t>(blockIdx.y) * kTileRows;
  const int ty = threadIdx.x / kSimtLanes;  // rows ty + 16 i
  const int tx = threadIdx.x % kSimtLanes;  // columns tx + 16 j

  float row_max[kSimtPerThread];
  float row_sum[kSimtPerThread];
#pragma unroll
  for (int i = 0; i < kSimtPerThread; ++i) {
    row_max[i] = -INFINITY;
    row_sum[i] = 0.f;
  }

  for (int64_t first_column = 0; first_column < n_other; first_column += kTileRows) {
    float acc[kSimtPerThread][kSimtPerThread] = {};
    for (int d0 = 0; d0 < shape.head_dim; d0 += kSimtDimChunk) {
      __syncthreads();  // the previous chunk (and lse_tile) is no longer read
      load_chunk_transposed(own_chunk, own_rows, own.stride_n, own.stride_d, first_own, n_own, d0, shape.head_dim);
      load_chunk_transposed(other_chunk, other_rows, other.stride_n, other.stride_d, first_column, n_other, d0,
                            shape.head_dim);
      if (kColumnPass && d0 == 0 && threadIdx.x < kTileRows) {
        const int64_t query = first_column + threadIdx.x;
        lse_tile[threadIdx.x] = query < n_other ? lse_rows[query * lse_in.stride_n] * kLog2e : 0.f;
      }
      __syncthreads();
#pragma unroll 8
      for (int d = 0; d < kSimtDimChunk; ++d) {
        float a[kSimtPerThread], b[kSimtPerThread];
#pragma unroll
        for (int i = 0; i < kSimtPerThread; ++i) {
          a[i] = own_chunk[d][ty + kSimtLanes * i];
          b[i] = other_chunk[d][tx + kSimtLanes * i];
        }
#pragma unroll
        for (int i = 0; i < kSimtPerThread; ++i) {
#pragma unroll
          for (int j = 0; j < kSimtPerThread; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
      }
    }
    bool present[kSimtPerThread];
    float lse2[kSimtPerThread];
#pragma unroll
    for (int j = 0; j < kSimtPerThread; ++j) {
      present[j] = first_column + tx + kSimtLanes * j < n_other;
      lse2[j] = kColumnPass ? lse_tile[tx + kSimtLanes * j] : 0.f;
    }
#pragma unroll
    for (int i = 0; i < kSimtPerThread; ++i) {
      if constexpr (kColumnPass) {
        row_sum[i] += column_terms(acc[i], lse2, present, shape.scale_log2);
      } else {
        float t[kSimtPerThread];
#pragma unroll
        for (int j = 0; j < kSimtPerThread; ++j) t[j] = present[j] ? acc[i][j] * shape.scale_log2 : -INFINITY;
        add_row_scores(row_max[i], row_sum[i], t);
      }
    }
  }

  // The 16 lanes with the same ty hold the same rows: merge them, then tx = 0 writes.
#pragma unroll
  for (int i = 0; i < kSimtPerThread; ++i) {
    const int64_t row = first_own + ty + kSimtLanes * i;
    if constexpr (kColumnPass) {
      const float sum = warp_sum<kSimtLanes - 1>(row_sum[i]);
      if (tx == 0 && row < n_own) out[bh.index * shape.n_tokens + row] = sum / static_cast<float>(n_other);
    } else {
      warp_merge_max_sum<kSimtLanes - 1>(row_max[i], row_sum[i]);
      if (tx == 0 && row < n_own) {
        lse_out.head(bh.batch, bh.head)[row * lse_out.stride_n] = (row_max[i] + log2f(row_sum[i])) * kLn2;
      }
    }
  }
}

}  // namespace visionzip::cuda::importance
