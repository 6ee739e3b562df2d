// Device code of the CUDA C++ backend of visionzip::zip_tokens (docs/CONTRACT.md): the views of the
// inputs, the plan that the kernels hand to each other, and the two planning kernels; the apply
// kernel that writes the tokens is in zip_apply_cuda.cuh. Launched by csrc/zip_tokens_cuda.cu.
//
// The work of one image is spread over three launches, in stream order:
//   1. zip_select_kernel, one block per image: scores, the top-k_dom and the list of remaining
//      tokens. A selection needs every score of its image, and one block holds them all in shared
//      memory; it is the shortest step (one pass over the scores, four radix passes).
//   2. zip_assign_kernel, blocks of `positions_per_block` remaining positions per image: unit keys,
//      similarities to the k_ctx targets and the argmax, the bulk of the arithmetic. Each block
//      recomputes the targets' unit keys itself, so blocks need nothing from each other and an
//      image's positions spread over as many SMs as the launch chooses.
//   3. zip_apply_kernel, blocks of channels per image: copies the dominant rows and sums the merge
//      rows, split by channel block, reading `hidden` once.
// Three launches rather than one: the steps need, in turn, all of an image's scores, all of its
// assignments, and all of its rows, and a grid-wide barrier inside one launch (cooperative launch)
// would forbid the batch sizes and block counts that make step 3 stream. Three rather than more:
// each further launch costs a few microseconds of latency at batch 1, where the op's budget is ~15.
//
// Every quantity that decides an index is evaluated in the contract's float32 order with explicit
// round-to-nearest intrinsics (__fadd_rn, __fmul_rn, __fdiv_rn, __fsqrt_rn), so no product is
// fused into a sum whatever the compiler flags, and the order does not depend on the launch shape:
// any positions_per_block, tile width or target chunk gives the same bits.
#pragma once

#include "device_primitives.cuh"

#include <climits>
#include <cstddef>
#include <cstdint>

namespace visionzip::cuda {

// Select kernel: 1024 threads cover N <= 1024 tokens (CLIP's 577, SigLIP's 729) in one pass, and
// 32 warps make the block scan one shuffle level deep.
constexpr int kSelectThreads = 1024;
constexpr int kMaxTokens = 4096;
constexpr int kTokensPerThread = kMaxTokens / kSelectThreads;  // tokens held per thread
constexpr int kRadixBins = 256;                                // 8-bit digits: four passes over 32 bits
// Assign kernel: 256 threads and (launch bounds) at most 128 registers per thread, so that two
// blocks fit an SM when the batch is large.
constexpr int kAssignThreads = 256;
// Similarity accumulators per thread: 12 takes the paper's k_ctx = 10 in one chunk.
constexpr int kMaxTargetsPerItem = 12;
// Loads in flight per thread while staging metric tiles (16-byte chunks or elements): a block
// stages its rows in a few round trips to memory rather than one per element.
constexpr int kStageUnroll = 4;
// Heads whose attention rows are loaded together before their ordered sum.
constexpr int kHeadBatch = 8;

static_assert(kTokensPerThread * kSelectThreads == kMaxTokens, "kMaxTokens must be a multiple of the block");

// Attention input, reduced to per-head rows: score[j] = sum_h row(h, j) in head order, where
// row(h, j) = data[b, h, j] or, with `sum_queries`, sum_i data[b, h, i, j] in query order.
// [B, N] scores are one head; the CLS row of a full map is a row layout with its key stride.
template <typename T>
struct AttnInput {
  const T* data;
  int64_t stride_b, stride_h, stride_q, stride_k;
  int heads;
  bool sum_queries;
};

// Similarity metric rows: keys [B, N, Dk] (heads = 1), per-head keys [B, H, N, hd] averaged over
// heads, or hidden [B, N, D]. `vectorised` holds when every 16-byte chunk of channels
// (kChunk<T> of them) is one aligned load: unit channel stride, Dk and the batch, head and token
// strides multiples of 8, a 16-byte aligned base.
template <typename T>
struct MetricInput {
  const T* data;
  int64_t stride_b, stride_h, stride_n, stride_d;
  int heads;
  int width;
  bool per_head;
  bool vectorised;
};

// The int32 plan of image b, plan[b * plan_stride ...], plan_stride = 2 N - k_dom slots:
//   [0, k_dom)   the dominant tokens, ascending                        (zip_select_kernel)
//   [k_dom, N)   the M = N - k_dom remaining tokens, ascending:
//                remaining position r holds token plan[k_dom + r]       (zip_select_kernel)
//   [N, N + M)   per remaining position r, its target t (>= 0) if r is
//                a merge token, -1 if r is itself a target              (zip_assign_kernel)
// Targets are the positions r = t * step, t < k_ctx, step = max(1, M / k_ctx).
__host__ __device__ constexpr int64_t plan_slots(int n_tokens, int k_dom) { return 2 * int64_t{n_tokens} - k_dom; }

struct SelectShape {
  int n_tokens, k_dom;
  bool has_cls;
  int64_t plan_stride;
};

// Sizes of the assign kernel: each block takes `positions_per_block` consecutive remaining
// positions of one image (position_blocks blocks per image); targets are processed in chunks of
// `target_chunk` (a multiple of 4, at most kMaxTargetsPerItem) per work item; metric channels in
// tiles of `tile_channels` held in shared memory.
struct AssignShape {
  int n_tokens, k_dom, k_ctx;
  int positions_per_block, position_blocks;
  int target_chunk, n_chunks, tile_channels;
  int64_t plan_stride;
};

__host__ __device__ constexpr size_t align16(size_t bytes) { return (bytes + 15) & ~size_t{15}; }

// Byte offsets of the select kernel's dynamic shared memory.
struct SelectLayout {
  size_t score_key, hist, scratch, bytes;
  __host__ __device__ explicit SelectLayout(int n_tokens) {
    score_key = 0;                                           // uint32 [N]: rank keys
    hist = align16(4 * static_cast<size_t>(n_tokens));       // uint32 [256]: radix histogram
    scratch = hist + 4 * kRadixBins;                         // int [32]: scan and select scalars
    bytes = scratch + 4 * 32;
  }
};

// Byte offsets of the assign kernel's dynamic shared memory, computed alike on host and device. A
// block's rows are the k_ctx targets, then its positions: n_rows = k_ctx + positions_per_block.
struct AssignLayout {
  size_t best_key, norm, row_tok, target_tile, row_tile, bytes;
  __host__ __device__ AssignLayout(int n_rows, int n_positions, int target_pitch, int tile_channels) {
    const size_t rows = static_cast<size_t>(n_rows);
    best_key = 0;                                       // uint64 [positions]: packed (similarity, target) maxima
    norm = best_key + 8 * static_cast<size_t>(n_positions);  // float [rows]: sums of squares, then norms
    row_tok = norm + 4 * rows;                          // int32 [rows]: the token of each row
    target_tile = align16(row_tok + 4 * rows);          // float [tile][target_pitch]: target unit keys
    row_tile = target_tile + 4 * static_cast<size_t>(tile_channels) * target_pitch;  // float [tile][rows]
    bytes = row_tile + 4 * static_cast<size_t>(tile_channels) * rows;
  }
};

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T>
constexpr int kChunk = 16 / sizeof(T);  // channels in one 16-byte load

// Unsigned key that orders floats like their values, with -0.0 and +0.0 equal.
__device__ __forceinline__ uint32_t orderable_bits(float value) {
  const uint32_t bits = __float_as_uint(value == 0.f ? 0.f : value);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Rank key of a token score: non-finite scores rank last, as -inf.
__device__ __forceinline__ uint32_t score_rank_key(float score) {
  return orderable_bits(isfinite(score) ? score : -INFINITY);
}

// Packed (similarity, target): the larger key has the larger similarity, NaN ranking as -inf, and
// equal similarities prefer the lower target.
__device__ __forceinline__ uint64_t assignment_key(float sim, int target) {
  const uint32_t sim_bits = orderable_bits(isnan(sim) ? -INFINITY : sim);
  return (static_cast<uint64_t>(sim_bits) << 32) | static_cast<uint32_t>(~static_cast<uint32_t>(target));
}

template <typename T>
__device__ float token_score(const AttnInput<T>& attn, int64_t b, int token, int n_tokens) {
  const T* column = attn.data + b * attn.stride_b + token * attn.stride_k;
  if (attn.sum_queries) {
    float score = 0.f;
    for (int h = 0; h < attn.heads; ++h) {
      const T* head = column + h * attn.stride_h;
      float row = to_float(head[0]);
#pragma unroll 16  // 16 queries' loads in flight ahead of the ordered sum
      for (int i = 1; i < n_tokens; ++i) row = __fadd_rn(row, to_float(head[i * attn.stride_q]));
      score = h == 0 ? row : __fadd_rn(score, row);
    }
    return score;
  }
  float score = 0.f;
  for (int h0 = 0; h0 < attn.heads; h0 += kHeadBatch) {
    float row[kHeadBatch];  // kHeadBatch heads' values loaded together, then summed in head order
#pragma unroll
    for (int u = 0; u < kHeadBatch; ++u) {
      row[u] = h0 + u < attn.heads ? to_float(column[(h0 + u) * attn.stride_h]) : 0.f;
    }
#pragma unroll
    for (int u = 0; u < kHeadBatch; ++u) {
      if (h0 + u < attn.heads) score = h0 + u == 0 ? row[u] : __fadd_rn(score, row[u]);
    }
  }
  return score;
}

// Metric channels d0 .. d0 + kChunk<T> - 1 of `token` as float32 (per-head keys: summed in head
// order, then divided by H). Requires metric.vectorised and d0 % kChunk<T> == 0.
template <typename T>
__device__ void load_metric_chunk(const MetricInput<T>& metric, int64_t b, int token, int d0, float (&x)[kChunk<T>]) {
  using Chunk = Pack<T, kChunk<T>>;
  const T* row = metric.data + b * metric.stride_b + token * metric.stride_n + d0;
  for (int h = 0; h < metric.heads; ++h) {
    const Chunk chunk = load_vector(reinterpret_cast<const Chunk*>(row + h * metric.stride_h));
#pragma unroll
    for (int k = 0; k < kChunk<T>; ++k) x[k] = h == 0 ? to_float(chunk.v[k]) : __fadd_rn(x[k], to_float(chunk.v[k]));
  }
  if (metric.per_head) {
#pragma unroll
    for (int k = 0; k < kChunk<T>; ++k) x[k] = __fdiv_rn(x[k], static_cast<float>(metric.heads));
  }
}

template <typename T>
__device__ float load_metric1(const MetricInput<T>& metric, int64_t b, int token, int d) {
  const T* element = metric.data + b * metric.stride_b + token * metric.stride_n + d * metric.stride_d;
  float x = to_float(element[0]);
  for (int h = 1; h < metric.heads; ++h) x = __fadd_rn(x, to_float(element[h * metric.stride_h]));
  return metric.per_head ? __fdiv_rn(x, static_cast<float>(metric.heads)) : x;
}

// Unit-key channel: correctly rounded division by the norm, 0 where the norm is not > 0.
__device__ __forceinline__ float unit_channel(float x, float norm) {
  return norm > 0.f ? __fdiv_rn(x, norm) : 0.f;
}

// tile[dd * n_rows + r] = metric channel d0 + dd of token row_tok[r] (its unit-key channel when
// `norm` is given), for dd < dt. Consecutive threads read consecutive channels of a row; each thread
// has kStageUnroll loads in flight.
template <typename T>
__device__ void stage_tile(const MetricInput<T>& metric, int64_t b, const int32_t* row_tok, int n_rows, int d0,
                           int dt, const float* norm, float* tile) {
  constexpr int kC = kChunk<T>;
  const int stride = static_cast<int>(blockDim.x);
  if (metric.vectorised && dt % kC == 0) {
    const int chunks = dt / kC, n_loads = n_rows * chunks;
    for (int e0 = threadIdx.x; e0 < n_loads; e0 += kStageUnroll * stride) {
      float x[kStageUnroll][kC];
#pragma unroll
      for (int u = 0; u < kStageUnroll; ++u) {
        const int e = e0 + u * stride;
        if (e < n_loads) load_metric_chunk(metric, b, row_tok[e / chunks], d0 + kC * (e % chunks), x[u]);
      }
#pragma unroll
      for (int u = 0; u < kStageUnroll; ++u) {
        const int e = e0 + u * stride, r = e / chunks, q = e % chunks;
        if (e < n_loads) {
#pragma unroll
          for (int k = 0; k < kC; ++k) {
            tile[(kC * q + k) * n_rows + r] = norm ? unit_channel(x[u][k], norm[r]) : x[u][k];
          }
        }
      }
    }
    return;
  }
  const int n_loads = n_rows * dt;
  for (int e0 = threadIdx.x; e0 < n_loads; e0 += kStageUnroll * stride) {
    float x[kStageUnroll];
#pragma unroll
    for (int u = 0; u < kStageUnroll; ++u) {
      const int e = e0 + u * stride;
      if (e < n_loads) x[u] = load_metric1(metric, b, row_tok[e / dt], d0 + e % dt);
    }
#pragma unroll
    for (int u = 0; u < kStageUnroll; ++u) {
      const int e = e0 + u * stride, r = e / dt;
      if (e < n_loads) tile[(e % dt) * n_rows + r] = norm ? unit_channel(x[u], norm[r]) : x[u];
    }
  }
}

// Exclusive prefix sum, in thread order, of one int per thread, for blocks of whole warps (at most
// 32 of them). Every thread of the block must call it; uses scratch[0, 32), which threads may still
// read when others return: a caller passes a __syncthreads() before it writes scratch again (the
// select kernel never does, the apply kernel passes two), so no barrier ends this function.
__device__ int block_exclusive_sum(int value, int* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n_warps = static_cast<int>(blockDim.x) >> 5;
  int inclusive = value;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int up = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += up;
  }
  if (lane == 31) scratch[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    const int warp_total = lane < n_warps ? scratch[lane] : 0;
    int warp_inclusive = warp_total;
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int up = __shfl_up_sync(0xffffffffu, warp_inclusive, offset);
      if (lane >= offset) warp_inclusive += up;
    }
    if (lane < n_warps) scratch[lane] = warp_inclusive - warp_total;
  }
  __syncthreads();
  return scratch[warp] + inclusive - value;
}

// The k-th largest of the candidates' keys (k >= 1, at most the number of candidates) by a
// most-significant-digit radix select: `threshold` is that key and `n_ties` how many candidates
// equal to it are among the k largest (taken lowest index first).
__device__ void radix_select(const uint32_t (&key)[kTokensPerThread], const bool (&candidate)[kTokensPerThread],
                             int k, uint32_t* hist, int* scratch, uint32_t& threshold, int& n_ties) {
  uint32_t prefix = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < kRadixBins; i += blockDim.x) hist[i] = 0;
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kTokensPerThread; ++i) {
      const bool in_prefix = shift == 24 || (key[i] >> (shift + 8)) == (prefix >> (shift + 8));
      if (candidate[i] && in_prefix) atomicAdd(&hist[(key[i] >> shift) & 0xFFu], 1u);
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      // Lane l owns bins [8l, 8l + 8); `above` counts the keys in higher bins.
      const int lane = threadIdx.x;
      int count[8], lane_total = 0;
#pragma unroll
      for (int i = 0; i < 8; ++i) lane_total += count[i] = static_cast<int>(hist[8 * lane + i]);
      int suffix = lane_total;
#pragma unroll
      for (int offset = 1; offset < 32; offset <<= 1) {
        const int down = __shfl_down_sync(0xffffffffu, suffix, offset);
        if (lane + offset < 32) suffix += down;
      }
      int above = suffix - lane_total;
      if (above < k && k <= suffix) {
        int digit = 0, k_in_digit = 0;
#pragma unroll
        for (int i = 7; i >= 0; --i) {
          if (digit == 0 && above + count[i] >= k) {
            digit = 8 * lane + i + 1;
            k_in_digit = k - above;
          }
          above += count[i];
        }
        scratch[0] = digit - 1;
        scratch[1] = k_in_digit;
      }
    }
    __syncthreads();
    prefix |= static_cast<uint32_t>(scratch[0]) << shift;
    k = scratch[1];
    __syncthreads();
  }
  threshold = prefix;
  n_ties = k;
}

// Select kernel: one block of kSelectThreads per image b; attention as in AttnInput, any strides,
// N <= kMaxTokens. Scores (head-reduced attention) and the top-k_dom (CLS always kept, ties to the
// lower index, non-finite scores last) by a radix select on rank keys; one block scan over the
// tokens in index order then gives every token its dominant rank or its remaining position.
// Writes dominant_idx[b, :] (int64, ascending) and plan[b][0, N) (see plan_slots).
template <typename attn_t>
__global__ void __launch_bounds__(kSelectThreads, 1)
    zip_select_kernel(AttnInput<attn_t> attn, SelectShape shape, int64_t* dominant_idx, int32_t* plan) {
  unsigned char* smem = dynamic_shared_bytes();
  const int n_tokens = shape.n_tokens, k_dom = shape.k_dom;
  const SelectLayout layout(n_tokens);
  auto* score_key = reinterpret_cast<uint32_t*>(smem + layout.score_key);
  auto* hist = reinterpret_cast<uint32_t*>(smem + layout.hist);
  auto* scratch = reinterpret_cast<int*>(smem + layout.scratch);
  const int64_t b = blockIdx.x;
  int32_t* image_plan = plan + b * shape.plan_stride;

  for (int j = threadIdx.x; j < n_tokens; j += kSelectThreads) {
    score_key[j] = score_rank_key(token_score(attn, b, j, n_tokens));
  }
  __syncthreads();
  const int per_thread = (n_tokens + kSelectThreads - 1) / kSelectThreads;
  const int first_token = threadIdx.x * per_thread;
  const int first_candidate = shape.has_cls ? 1 : 0;
  uint32_t key[kTokensPerThread];
  bool candidate[kTokensPerThread];
#pragma unroll
  for (int i = 0; i < kTokensPerThread; ++i) {
    const int j = first_token + i;
    candidate[i] = i < per_thread && j >= first_candidate && j < n_tokens;
    key[i] = candidate[i] ? score_key[j] : 0u;
  }
  uint32_t threshold = 0xFFFFFFFFu;  // above every rank key: nothing picked when k_dom counts only CLS
  int n_ties = 0;
  if (k_dom > first_candidate) radix_select(key, candidate, k_dom - first_candidate, hist, scratch, threshold, n_ties);

  // Two counts in one int, so that one block scan gives both: candidates above the threshold in the
  // low 16 bits, candidates tied with it in the high 16 bits (each at most kMaxTokens < 2^16).
  int count_pair[kTokensPerThread], thread_pairs = 0;
#pragma unroll
  for (int i = 0; i < kTokensPerThread; ++i) {
    count_pair[i] =
        candidate[i] ? static_cast<int>(key[i] > threshold) + (static_cast<int>(key[i] == threshold) << 16) : 0;
    thread_pairs += count_pair[i];
  }
  int pairs_before = block_exclusive_sum(thread_pairs, scratch);  // both counts over the tokens before j
#pragma unroll
  for (int i = 0; i < kTokensPerThread; ++i) {
    const int j = first_token + i;
    if (i < per_thread && j < n_tokens) {
      const int ties_before = pairs_before >> 16;
      const bool dominant = !candidate[i] || key[i] > threshold || (key[i] == threshold && ties_before < n_ties);
      const int rank = static_cast<int>(shape.has_cls && j > 0) + (pairs_before & 0xFFFF) + min(ties_before, n_ties);
      if (dominant) {
        dominant_idx[b * k_dom + rank] = j;
        image_plan[rank] = j;
      } else {
        image_plan[k_dom + j - rank] = j;
      }
      pairs_before += count_pair[i];
    }
  }
}

// Assign kernel: block = (image b, positions [p0, p0 + positions_per_block) of its remaining list),
// kAssignThreads threads, k_ctx >= 1; metric as in MetricInput, any strides. Reads the remaining
// tokens from plan[b][k_dom, N) and writes plan[b][N + p] for the block's positions p: the target
// of each merge token, -1 for a target. In the contract's terms:
//   - the block's rows are the k_ctx targets' tokens, then its positions' tokens;
//   - norms of the rows' metric (channels summed in order across tiles), then their unit keys,
//     staged tile by tile in shared memory;
//   - each merge token's similarities to the targets, channels summed in order (work item = one
//     position x a chunk of targets, accumulators in registers), the argmax with ties to the lower
//     target and NaN last; the chunks' maxima are combined by a 64-bit atomicMax on assignment_key,
//     whose result does not depend on the order of the atomics.
// The targets' unit keys are recomputed by every block of the image, the price of needing nothing
// from other blocks (for the paper's k_ctx = 10, 10 rows beside each block's 32 to 256).
template <typename key_t>
__global__ void __launch_bounds__(kAssignThreads, 2)
    zip_assign_kernel(MetricInput<key_t> metric, AssignShape shape, int32_t* plan) {
  unsigned char* smem = dynamic_shared_bytes();
  const int n_tokens = shape.n_tokens, k_dom = shape.k_dom, n_targets = shape.k_ctx;
  const int n_rem = n_tokens - k_dom;
  const int64_t b = blockIdx.x / shape.position_blocks;
  const int first_pos = static_cast<int>(blockIdx.x % shape.position_blocks) * shape.positions_per_block;
  const int n_pos = min(shape.positions_per_block, n_rem - first_pos);
  const int n_rows = n_targets + n_pos;
  const int target_pitch = shape.n_chunks * shape.target_chunk;
  const AssignLayout layout(n_rows, shape.positions_per_block, target_pitch, shape.tile_channels);
  auto* best_key = reinterpret_cast<uint64_t*>(smem + layout.best_key);
  auto* norm = reinterpret_cast<float*>(smem + layout.norm);
  auto* row_tok = reinterpret_cast<int32_t*>(smem + layout.row_tok);
  auto* target_tile = reinterpret_cast<float*>(smem + layout.target_tile);
  auto* row_tile = reinterpret_cast<float*>(smem + layout.row_tile);
  int32_t* image_plan = plan + b * shape.plan_stride;
  const int32_t* rem_tok = image_plan + k_dom;
  int32_t* assigned = image_plan + n_tokens;

  const int step = max(1, n_rem / n_targets);
  auto is_target = [&](int r) { return r % step == 0 && r / step < n_targets; };
  for (int row = threadIdx.x; row < n_rows; row += blockDim.x) {
    row_tok[row] = rem_tok[row < n_targets ? row * step : first_pos + row - n_targets];
    norm[row] = 0.f;
  }

  // Norms of the rows' metric, channels summed in order across tiles.
  const int width = metric.width, dt_max = shape.tile_channels;
  const int n_tiles = (width + dt_max - 1) / dt_max;
  for (int tile = 0; tile < n_tiles; ++tile) {
    const int d0 = tile * dt_max, dt = min(dt_max, width - d0);
    __syncthreads();
    stage_tile(metric, b, row_tok, n_rows, d0, dt, static_cast<const float*>(nullptr), row_tile);
    __syncthreads();
    for (int r = threadIdx.x; r < n_rows; r += blockDim.x) {
      float sum_sq = norm[r];
      for (int dd = 0; dd < dt; ++dd) {
        const float x = row_tile[dd * n_rows + r];
        sum_sq = __fadd_rn(sum_sq, __fmul_rn(x, x));
      }
      norm[r] = tile == n_tiles - 1 ? __fsqrt_rn(sum_sq) : sum_sq;
    }
  }
  for (int i = threadIdx.x; i < n_pos; i += blockDim.x) best_key[i] = 0;

  // Similarities of merge tokens to targets; work item = (position, chunk of targets).
  const int chunk = shape.target_chunk, n_items = n_pos * shape.n_chunks;
  for (int round = 0; round < n_items; round += blockDim.x) {
    const int item = round + threadIdx.x;
    const int i = item % n_pos, r = n_targets + i, t0 = (item / n_pos) * chunk;
    const bool active = item < n_items && !is_target(first_pos + i);
    float acc[kMaxTargetsPerItem] = {};
    for (int tile = 0; tile < n_tiles; ++tile) {
      const int d0 = tile * dt_max, dt = min(dt_max, width - d0);
      if (n_tiles > 1 || round == 0) {
        __syncthreads();
        if (n_tiles > 1) {
          stage_tile(metric, b, row_tok, n_rows, d0, dt, norm, row_tile);
        } else {
          for (int e = threadIdx.x; e < dt * n_rows; e += blockDim.x) {
            row_tile[e] = unit_channel(row_tile[e], norm[e % n_rows]);
          }
        }
        __syncthreads();
        for (int e = threadIdx.x; e < dt * target_pitch; e += blockDim.x) {
          const int dd = e / target_pitch, t = e % target_pitch;
          target_tile[e] = t < n_targets ? row_tile[dd * n_rows + t] : 0.f;
        }
        __syncthreads();
      }
      if (active) {
        // Four targets per pass over the tile: one float4 of target channels per row channel.
#pragma unroll
        for (int q = 0; q < kMaxTargetsPerItem / 4; ++q) {
          if (4 * q < chunk) {
            for (int dd = 0; dd < dt; ++dd) {
              const float u = row_tile[dd * n_rows + r];
              const float* targets = target_tile + dd * target_pitch + t0 + 4 * q;
              const float4 v = load_vector(reinterpret_cast<const float4*>(targets));
              acc[4 * q + 0] = __fadd_rn(acc[4 * q + 0], __fmul_rn(u, v.x));
              acc[4 * q + 1] = __fadd_rn(acc[4 * q + 1], __fmul_rn(u, v.y));
              acc[4 * q + 2] = __fadd_rn(acc[4 * q + 2], __fmul_rn(u, v.z));
              acc[4 * q + 3] = __fadd_rn(acc[4 * q + 3], __fmul_rn(u, v.w));
            }
          }
        }
      }
    }
    if (active) {
      uint64_t best = 0;
#pragma unroll
      for (int w = 0; w < kMaxTargetsPerItem; ++w) {
        const int t = t0 + w;
        if (w < chunk && t < n_targets) {
          const uint64_t candidate_key = assignment_key(acc[w], t);
          best = candidate_key > best ? candidate_key : best;
        }
      }
      atomicMax(reinterpret_cast<unsigned long long*>(best_key + i), static_cast<unsigned long long>(best));
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < n_pos; i += blockDim.x) {
    const int pos = first_pos + i;
    assigned[pos] = is_target(pos) ? -1 : static_cast<int>(~static_cast<uint32_t>(best_key[i]));
  }
}

}  // namespace visionzip::cuda
