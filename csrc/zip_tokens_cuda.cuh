// Device code of the CUDA C++ backend of visionzip::zip_tokens (docs/CONTRACT.md): the plan
// kernel, the apply kernel, and the views of their inputs. Launched by csrc/zip_tokens_cuda.cu.
//
// Every quantity that decides an index is evaluated in the contract's float32 order with explicit
// round-to-nearest intrinsics (__fadd_rn, __fmul_rn, __fdiv_rn, __fsqrt_rn), so no product is
// fused into a sum whatever the compiler flags.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstddef>
#include <cstdint>

namespace visionzip::cuda {

// Plan kernel: 1024 threads cover N <= 1024 tokens (CLIP's 577, SigLIP's 729) in one pass of each
// phase, and 32 warps make the block scans one shuffle level deep.
constexpr int kPlanThreads = 1024;
constexpr int kPlanWarps = kPlanThreads / 32;
constexpr int kMaxTokens = 4096;
constexpr int kTokensPerThread = kMaxTokens / kPlanThreads;  // tokens (or targets) held per thread
constexpr int kRadixBins = 256;                              // 8-bit digits: four passes over 32 bits
// Similarity accumulators per thread: 12 fits the 64 registers a 1024-thread block allows, and
// takes the paper's k_ctx = 10 in one chunk.
constexpr int kMaxTargetsPerItem = 12;
// Apply kernel: each token lane loads up to 8 rows at once (8 x 16 bytes in flight per thread);
// that takes ~126 registers, so blocks of at most 256 threads keep two blocks resident per SM.
constexpr int kApplyUnroll = 8;
constexpr int kApplyMaxThreads = 256;
// Channel lanes of an apply block: 8 x 16-byte vectors or 32 scalars, 64-128 bytes of each row.
constexpr int apply_channel_lanes(int vec) { return vec > 1 ? 8 : 32; }
constexpr int32_t kPastEnd = INT32_MIN;  // a list entry beyond a lane's span (see zip_apply_kernel)

static_assert(kPlanWarps == 32, "block_exclusive_sum scans one warp total per lane of warp 0");
static_assert(kTokensPerThread * kPlanThreads == kMaxTokens, "kMaxTokens must be a multiple of the block");

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

template <typename T>
struct HiddenInput {
  const T* data;
  int64_t stride_b, stride_n, stride_d;
};

// Sizes of one zip_tokens call as the plan kernel sees them. Targets are processed in chunks of
// `target_chunk` (a multiple of 4, at most kMaxTargetsPerItem) per work item; metric channels in
// tiles of `tile_channels` held in shared memory.
struct PlanShape {
  int n_tokens, k_dom, k_ctx;
  bool has_cls;
  int target_chunk, n_chunks, tile_channels;
  int64_t plan_stride;  // N + 2 * k_ctx int32 slots per image, see zip_plan_kernel
};

struct ApplyShape {
  int n_tokens, width, k_dom, k_ctx;
  int channel_blocks;
  int64_t plan_stride;
};

__host__ __device__ constexpr size_t align16(size_t bytes) { return (bytes + 15) & ~size_t{15}; }

// Byte offsets of the plan kernel's dynamic shared memory, computed alike on host and device.
struct PlanLayout {
  size_t best_key, score_key, rem_tok, hist, scratch, target_tile, row_tile, bytes;
  __host__ __device__ PlanLayout(int n_tokens, int target_pitch, int tile_channels) {
    const size_t n = static_cast<size_t>(n_tokens);
    best_key = 0;                                // uint64 [N]: packed (similarity, target) maxima
    score_key = best_key + 8 * n;                // uint32 [N]: rank keys, then float norms
    rem_tok = score_key + 4 * n;                 // int16 [N]: remaining tokens in index order
    hist = align16(rem_tok + 2 * n);             // uint32 [256]: radix histogram
    scratch = hist + 4 * kRadixBins;             // int [kPlanWarps]: scan and select scalars
    target_tile = align16(scratch + 4 * kPlanWarps);  // float [tile][target_pitch]
    row_tile = target_tile + 4 * static_cast<size_t>(tile_channels) * target_pitch;  // float [tile][M], sized for N
    bytes = row_tile + 4 * static_cast<size_t>(tile_channels) * n;
  }
};

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T>
constexpr int kChunk = 16 / sizeof(T);  // channels in one 16-byte load

template <typename T>
__device__ __forceinline__ float to_float(T value) {
  return static_cast<float>(value);
}

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
  float score = 0.f;
  for (int h = 0; h < attn.heads; ++h) {
    const T* head = column + h * attn.stride_h;
    float row = to_float(head[0]);
    if (attn.sum_queries) {
#pragma unroll 16  // 16 queries' loads in flight ahead of the ordered sum
      for (int i = 1; i < n_tokens; ++i) row = __fadd_rn(row, to_float(head[i * attn.stride_q]));
    }
    score = h == 0 ? row : __fadd_rn(score, row);
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
    const Chunk chunk = *reinterpret_cast<const Chunk*>(row + h * metric.stride_h);
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

// tile[dd * n_rem + r] = metric channel d0 + dd of remaining token r (its unit-key channel when
// `norm` is given), for dd < dt. Consecutive threads read consecutive channels of a row.
template <typename T>
__device__ void stage_tile(const MetricInput<T>& metric, int64_t b, const int16_t* rem_tok, int n_rem, int d0,
                           int dt, const float* norm, float* tile) {
  constexpr int kC = kChunk<T>;
  if (metric.vectorised && dt % kC == 0) {
    const int chunks = dt / kC;
    for (int e = threadIdx.x; e < n_rem * chunks; e += blockDim.x) {
      const int r = e / chunks, q = e % chunks;
      float x[kC];
      load_metric_chunk(metric, b, rem_tok[r], d0 + kC * q, x);
#pragma unroll
      for (int k = 0; k < kC; ++k) tile[(kC * q + k) * n_rem + r] = norm ? unit_channel(x[k], norm[r]) : x[k];
    }
    return;
  }
  for (int e = threadIdx.x; e < n_rem * dt; e += blockDim.x) {
    const int r = e / dt, dd = e % dt;
    const float x = load_metric1(metric, b, rem_tok[r], d0 + dd);
    tile[dd * n_rem + r] = norm ? unit_channel(x, norm[r]) : x;
  }
}

// Exclusive prefix sum, in thread order, of one int per thread. Every thread of the block must
// call it; uses scratch[0, kPlanWarps).
__device__ int block_exclusive_sum(int value, int* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int inclusive = value;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int up = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += up;
  }
  if (lane == 31) scratch[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    const int warp_total = scratch[lane];
    int warp_inclusive = warp_total;
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int up = __shfl_up_sync(0xffffffffu, warp_inclusive, offset);
      if (lane >= offset) warp_inclusive += up;
    }
    scratch[lane] = warp_inclusive - warp_total;
  }
  __syncthreads();
  const int exclusive = scratch[warp] + inclusive - value;
  __syncthreads();
  return exclusive;
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

// Plan kernel: one block of kPlanThreads per image b; inputs as in AttnInput and MetricInput, any
// strides, N <= kMaxTokens. Computes, in the contract's terms:
//   - scores (head-reduced attention) and the top-k_dom (CLS always kept, ties to the lower index,
//     non-finite scores last) by a radix select on rank keys; one block scan then gives every
//     token its dominant rank or its position in the remaining list;
//   - dominant_idx[b, :] (int64, ascending);
//   - for k_ctx > 0: targets every `step` remaining positions; norms of the remaining tokens'
//     metric (channels summed in order) and their unit keys, staged tile by tile in shared memory;
//     each merge token's target by similarities summed in channel order (work item = one merge
//     token x a chunk of targets, accumulators in registers), argmax with ties to the lower target
//     and NaN last, combined over chunks by a 64-bit atomicMax on assignment_key;
//   - a stable counting sort of the merge tokens by target (one warp, match_any).
// plan[b] (int32, plan_stride slots): [0, k_dom) dominant tokens; [k_dom, N) the M remaining
// tokens grouped by target, each group a header -1 - t followed by its merge tokens in index order;
// [N, N + k_ctx) target tokens; [N + k_ctx, N + 2 k_ctx) the number of merge tokens per target.
template <typename attn_t, typename key_t>
__global__ void __launch_bounds__(kPlanThreads, 1)
    zip_plan_kernel(AttnInput<attn_t> attn, MetricInput<key_t> metric, PlanShape shape, int64_t* dominant_idx,
                    int32_t* plan) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int n_tokens = shape.n_tokens, k_dom = shape.k_dom, n_targets = shape.k_ctx;
  const int n_rem = n_tokens - k_dom;
  const int target_pitch = shape.n_chunks * shape.target_chunk;
  const PlanLayout layout(n_tokens, target_pitch, shape.tile_channels);
  auto* best_key = reinterpret_cast<uint64_t*>(smem + layout.best_key);
  auto* score_key = reinterpret_cast<uint32_t*>(smem + layout.score_key);
  auto* norm = reinterpret_cast<float*>(smem + layout.score_key);  // once the rank keys are consumed
  auto* rem_tok = reinterpret_cast<int16_t*>(smem + layout.rem_tok);
  auto* hist = reinterpret_cast<uint32_t*>(smem + layout.hist);
  auto* scratch = reinterpret_cast<int*>(smem + layout.scratch);
  auto* target_tile = reinterpret_cast<float*>(smem + layout.target_tile);
  auto* row_tile = reinterpret_cast<float*>(smem + layout.row_tile);
  const int64_t b = blockIdx.x;
  int32_t* image_plan = plan + b * shape.plan_stride;

  // Dominant tokens.
  for (int j = threadIdx.x; j < n_tokens; j += kPlanThreads) {
    score_key[j] = score_rank_key(token_score(attn, b, j, n_tokens));
  }
  __syncthreads();
  const int per_thread = (n_tokens + kPlanThreads - 1) / kPlanThreads;
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
        rem_tok[j - rank] = static_cast<int16_t>(j);
      }
      pairs_before += count_pair[i];
    }
  }
  __syncthreads();
  if (n_targets == 0) return;

  // Norms of the remaining tokens' metric, channels summed in order across tiles.
  const int step = max(1, n_rem / n_targets);
  auto is_target = [&](int r) { return r % step == 0 && r / step < n_targets; };
  const int width = metric.width, dt_max = shape.tile_channels;
  const int n_tiles = (width + dt_max - 1) / dt_max;
  for (int r = threadIdx.x; r < n_rem; r += kPlanThreads) norm[r] = 0.f;
  for (int tile = 0; tile < n_tiles; ++tile) {
    const int d0 = tile * dt_max, dt = min(dt_max, width - d0);
    __syncthreads();
    stage_tile(metric, b, rem_tok, n_rem, d0, dt, nullptr, row_tile);
    __syncthreads();
    for (int r = threadIdx.x; r < n_rem; r += kPlanThreads) {
      float sum_sq = norm[r];
      for (int dd = 0; dd < dt; ++dd) {
        const float x = row_tile[dd * n_rem + r];
        sum_sq = __fadd_rn(sum_sq, __fmul_rn(x, x));
      }
      norm[r] = tile == n_tiles - 1 ? __fsqrt_rn(sum_sq) : sum_sq;
    }
  }
  for (int r = threadIdx.x; r < n_rem; r += kPlanThreads) best_key[r] = 0;
  __syncthreads();

  // Similarities of merge tokens to targets; work item = (remaining position r, chunk of targets).
  const int chunk = shape.target_chunk, n_items = n_rem * shape.n_chunks;
  for (int round = 0; round < n_items; round += kPlanThreads) {
    const int item = round + threadIdx.x;
    const int r = item % n_rem, t0 = (item / n_rem) * chunk;
    const bool active = item < n_items && !is_target(r);
    float acc[kMaxTargetsPerItem] = {};
    for (int tile = 0; tile < n_tiles; ++tile) {
      const int d0 = tile * dt_max, dt = min(dt_max, width - d0);
      if (n_tiles > 1 || round == 0) {
        __syncthreads();
        if (n_tiles > 1) {
          stage_tile(metric, b, rem_tok, n_rem, d0, dt, norm, row_tile);
        } else {
          for (int e = threadIdx.x; e < dt * n_rem; e += kPlanThreads) {
            row_tile[e] = unit_channel(row_tile[e], norm[e % n_rem]);
          }
        }
        __syncthreads();
        for (int e = threadIdx.x; e < dt * target_pitch; e += kPlanThreads) {
          const int dd = e / target_pitch, t = e % target_pitch;
          target_tile[e] = t < n_targets ? row_tile[dd * n_rem + t * step] : 0.f;
        }
        __syncthreads();
      }
      if (active) {
        // Four targets per pass over the tile: one float4 of target channels per row channel.
#pragma unroll
        for (int q = 0; q < kMaxTargetsPerItem / 4; ++q) {
          if (4 * q < chunk) {
            for (int dd = 0; dd < dt; ++dd) {
              const float u = row_tile[dd * n_rem + r];
              const float4 v = *reinterpret_cast<const float4*>(target_tile + dd * target_pitch + t0 + 4 * q);
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
      atomicMax(reinterpret_cast<unsigned long long*>(best_key + r), static_cast<unsigned long long>(best));
    }
  }
  __syncthreads();

  // Group the merge tokens by target: counts, group offsets, then a stable placement.
  auto* member_count = reinterpret_cast<int*>(target_tile);  // the tiles are free now: 2 * k_ctx ints fit
  auto* cursor = reinterpret_cast<int*>(row_tile);
  auto assigned = [&](int rr) { return static_cast<int>(~static_cast<uint32_t>(best_key[rr])); };
  for (int t = threadIdx.x; t < n_targets; t += kPlanThreads) member_count[t] = 0;
  __syncthreads();
  for (int rr = threadIdx.x; rr < n_rem; rr += kPlanThreads) {
    if (!is_target(rr)) atomicAdd(&member_count[assigned(rr)], 1);
  }
  __syncthreads();
  const int targets_per_thread = (n_targets + kPlanThreads - 1) / kPlanThreads;
  const int first_target = threadIdx.x * targets_per_thread;
  int thread_entries = 0;  // list entries of this thread's groups: a header and the members of each
  for (int t = first_target; t < min(n_targets, first_target + targets_per_thread); ++t) {
    thread_entries += member_count[t] + 1;
  }
  int group_start = block_exclusive_sum(thread_entries, scratch);
  for (int t = first_target; t < min(n_targets, first_target + targets_per_thread); ++t) {
    image_plan[k_dom + group_start] = -1 - t;
    image_plan[n_tokens + t] = rem_tok[t * step];
    image_plan[n_tokens + n_targets + t] = member_count[t];
    cursor[t] = group_start + 1;
    group_start += member_count[t] + 1;
  }
  __syncthreads();
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    for (int base = 0; base < n_rem; base += 32) {
      const int rr = base + lane;
      const bool merge = rr < n_rem && !is_target(rr);
      const int t = merge ? assigned(rr) : -1;
      const unsigned peers = __match_any_sync(0xffffffffu, t);
      if (merge) image_plan[k_dom + cursor[t] + __popc(peers & ((1u << lane) - 1u))] = rem_tok[rr];
      __syncwarp();
      if (merge && lane == __ffs(peers) - 1) cursor[t] += __popc(peers);
      __syncwarp();
    }
  }
}

// Apply kernel: block = (image b, block of kLanesC * VEC channels); threads = kLanesC channel lanes
// x token_lanes = blockDim.x / kLanesC token lanes. Writes tokens[b] (contiguous [B, k_dom + k_ctx,
// D]) from hidden (any batch and token strides; VEC > 1 needs unit channel stride and 16-byte
// alignment), reading the plan that zip_plan_kernel laid out.
//
// Dominant rows: token lane l copies output rows l, l + token_lanes, ... bit for bit, kApplyUnroll
// rows loaded together.
//
// Contextual rows: row t = float(hidden[target_t]) + sum_t / count_t, rounded once, where sum_t is
// the float32 sum of the merge rows of target t (hidden[target_t] alone where count_t = 0). The plan
// lists the M remaining tokens grouped by target, in plan[b][k_dom, N): for t = 0, 1, ..., k_ctx - 1
// a header entry -1 - t (negative), then the token indices (>= 0) of t's merge tokens in index
// order; count_t is stored apart, in plan[b][N + k_ctx + t]. With k_ctx = 3, for example:
//     -1 12 40 | -2 | -3 7 9 31 60       (group 0: two rows, group 1: none, group 2: four)
//
// Segmented sum. The list is cut into token_lanes equal contiguous spans, one per token lane, so
// that every lane reads about as many rows whatever the group sizes. A lane walks its span once,
// kApplyUnroll entries at a time: the entries before the next header (or the span's end) are loaded
// together, then added to `acc` in list order. Entries past the span's end read as kPastEnd
// (INT32_MIN): negative, so it ends a batch as a header does, but it is never opened as a group.
//   - A group whose header lies in a lane's span is that lane's: when the lane meets the next header
//     inside its span, the group is complete, and the lane writes it (write_group).
//   - The rows at the start of a span, before its first header, belong to a group opened in an
//     earlier span. The lane leaves their partial sum in shared memory, carry[lane], and records in
//     carry_state[lane] how its span meets that group:
//       kNoCarry      nothing to hand over: the span is empty, or starts with a header;
//       kCarryCloses  the span holds the group's last rows, then a header: the group ends here;
//       kCarryPasses  the span holds no header: the group runs through it, and maybe further.
//   - A lane whose last group is still open at its span's end, the next entry being a merge row
//     (`tail_open`), finishes it after the __syncthreads(): it walks the following lanes in order,
//     adding the carry of each that reports kCarryPasses and of the first that reports kCarryCloses,
//     where it stops (as at a kNoCarry lane, which adds nothing), then writes the group.
// Every group is written once, by the lane that holds its header; its sum is that lane's rows in list
// order, then the carries in lane order. The order depends only on the plan and the block's shape,
// so the output is deterministic (the contract leaves the order of the merge sums free).
template <typename T, int VEC>
__global__ void __launch_bounds__(kApplyMaxThreads, 2)
    zip_apply_kernel(HiddenInput<T> hidden, ApplyShape shape, const int32_t* plan, T* tokens) {
  constexpr int kLanesC = apply_channel_lanes(VEC);
  constexpr int kBlockChannels = kLanesC * VEC;
  constexpr int kNoCarry = 0, kCarryCloses = 1, kCarryPasses = 2;  // carry_state values, see above
  using Vec = Pack<T, VEC>;
  extern __shared__ __align__(16) unsigned char smem[];
  const int token_lanes = blockDim.x / kLanesC;
  auto* carry = reinterpret_cast<float*>(smem);                         // [token_lanes][kBlockChannels]
  auto* carry_state = reinterpret_cast<int*>(carry + token_lanes * kBlockChannels);  // [token_lanes]
  const int lane_c = threadIdx.x % kLanesC, lane_t = threadIdx.x / kLanesC;
  const int64_t b = blockIdx.x / shape.channel_blocks;
  const int channel = (blockIdx.x % shape.channel_blocks) * kBlockChannels + lane_c * VEC;
  const bool in_range = channel < shape.width;
  const T* src = hidden.data + b * hidden.stride_b + (in_range ? channel : 0) * hidden.stride_d;
  T* dst = tokens + b * (shape.k_dom + shape.k_ctx) * static_cast<int64_t>(shape.width) + (in_range ? channel : 0);
  const int32_t* image_plan = plan + b * shape.plan_stride;
  auto load = [&](int token) { return *reinterpret_cast<const Vec*>(src + token * hidden.stride_n); };
  auto store = [&](int row, const Vec& value) {
    *reinterpret_cast<Vec*>(dst + row * static_cast<int64_t>(shape.width)) = value;
  };

  for (int i = lane_t; i < shape.k_dom; i += kApplyUnroll * token_lanes) {
    Vec row[kApplyUnroll];  // this lane's next kApplyUnroll dominant rows, loaded together
#pragma unroll
    for (int u = 0; u < kApplyUnroll; ++u) {
      if (i + u * token_lanes < shape.k_dom && in_range) row[u] = load(image_plan[i + u * token_lanes]);
    }
#pragma unroll
    for (int u = 0; u < kApplyUnroll; ++u) {
      if (i + u * token_lanes < shape.k_dom && in_range) store(i + u * token_lanes, row[u]);
    }
  }
  if (shape.k_ctx == 0) return;

  const int n_rem = shape.n_tokens - shape.k_dom;
  const int32_t* groups = image_plan + shape.k_dom;
  const int32_t* target_tok = image_plan + shape.n_tokens;
  const int32_t* member_count = target_tok + shape.k_ctx;
  auto write_group = [&](int t, const float (&sum)[VEC]) {
    if (!in_range) return;
    const int count = member_count[t];
    const Vec target = load(target_tok[t]);
    Vec out;
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const float mean = count > 0 ? __fdiv_rn(sum[v], static_cast<float>(count)) : 0.f;
      out.v[v] = static_cast<T>(__fadd_rn(to_float(target.v[v]), mean));
    }
    store(shape.k_dom + t, out);
  };

  const int span = (n_rem + token_lanes - 1) / token_lanes;
  const int begin = min(n_rem, lane_t * span), end = min(n_rem, begin + span);
  float acc[VEC] = {};
  int open_group = -1;  // a group whose header lies in this span
  int state = kNoCarry;
  for (int i = begin; i < end;) {
    // Up to kApplyUnroll merge rows before the next header (or the span's end), loaded together.
    int32_t entry[kApplyUnroll];
#pragma unroll
    for (int u = 0; u < kApplyUnroll; ++u) entry[u] = i + u < end ? groups[i + u] : kPastEnd;
    int n_rows = kApplyUnroll, header = kPastEnd;
#pragma unroll
    for (int u = kApplyUnroll - 1; u >= 0; --u) {
      if (entry[u] < 0) {
        n_rows = u;
        header = entry[u];
      }
    }
    Vec row[kApplyUnroll];
#pragma unroll
    for (int u = 0; u < kApplyUnroll; ++u) {
      if (u < n_rows && in_range) row[u] = load(entry[u]);
    }
#pragma unroll
    for (int u = 0; u < kApplyUnroll; ++u) {
      if (u < n_rows && in_range) {
#pragma unroll
        for (int v = 0; v < VEC; ++v) acc[v] += to_float(row[u].v[v]);
      }
    }
    i += n_rows;
    if (n_rows == kApplyUnroll || i == end) continue;
    // groups[i] is the header of group -1 - groups[i]: close what came before it, open it.
    if (open_group >= 0) {
      write_group(open_group, acc);
    } else if (i > begin) {
#pragma unroll
      for (int v = 0; v < VEC; ++v) carry[lane_t * kBlockChannels + lane_c * VEC + v] = acc[v];
      state = kCarryCloses;
    }
    open_group = -1 - header;
#pragma unroll
    for (int v = 0; v < VEC; ++v) acc[v] = 0.f;
    ++i;
  }
  bool tail_open = false;
  if (open_group >= 0) {
    tail_open = end < n_rem && groups[end] >= 0;
    if (!tail_open) write_group(open_group, acc);
  } else if (begin < end) {
#pragma unroll
    for (int v = 0; v < VEC; ++v) carry[lane_t * kBlockChannels + lane_c * VEC + v] = acc[v];
    state = kCarryPasses;
  }
  if (lane_c == 0) carry_state[lane_t] = state;
  __syncthreads();
  if (tail_open) {
    for (int lane = lane_t + 1; lane < token_lanes; ++lane) {
      const int next = carry_state[lane];
      if (next == kNoCarry) break;
#pragma unroll
      for (int v = 0; v < VEC; ++v) acc[v] += carry[lane * kBlockChannels + lane_c * VEC + v];
      if (next == kCarryCloses) break;
    }
    write_group(open_group, acc);
  }
}

}  // namespace visionzip::cuda
