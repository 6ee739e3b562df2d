// Device code of the CUDA C++ backend of visionzip::zip_tokens_varlen (docs/CONTRACT.md, "the varlen
// ops"): the same algorithm as the Triton backend (visionzip_kernels/ops/zip_tokens_varlen/
// triton_kernels.py), one block per segment, in two launches (csrc/zip_tokens_varlen_cuda.cu):
//   1. zip_varlen_plan_kernel, kPlanThreads threads per segment: the top-k_dom of the segment's
//      importance by a bitwise search for the k_dom-th largest rank key (ties to the lower index,
//      non-finite last); block counts in index order, kPlanThreads tokens per pass, number the
//      dominant tokens, the remaining positions and the kept rows (dominant and targets, in index
//      order); each target's thread writes its unit key; then each merge token's target
//      (similarities summed in channel order, the first largest wins, NaN never). Writes kept_idx,
//      cu_kept and the workspaces.
//   2. zip_varlen_apply_kernel, kApplyThreads threads (one channel each) per (segment, block of
//      kApplyTargets target slots, block of channels): copies the dominant rows, sums each target's
//      merge rows in index order in float32 and writes hidden[target] + sum / count, rounded once.
// Workspaces: destination int32 [T_total] (-2 - r: dominant of output row r; -1: target; t >= 0:
// merge token of target slot t), and per target slot of the batch (a segment's slots from its
// ctx_start): target_tok, target_row int32 (segment-local token and output row) and unit float
// [slots, Dk] (the target's unit key).
//
// Every address comes from the host's sizes (SegmentTable, a kernel parameter: no copy, nothing read
// on the host, capturable in a CUDA graph), which the host has checked: segments tile [0, T_total)
// and keep k_dom + k_ctx <= n_tokens tokens each. Then the selection keeps exactly k_dom dominant
// tokens and exactly k_ctx targets (n_rem = n_tokens - k_dom >= k_ctx, step = max(1, n_rem / k_ctx),
// so k_ctx * step <= n_rem), so every kept row, target slot and destination entry is written once and
// every write lies in its segment's rows. A cu_seqlens on the device is only compared with those
// sizes: a segment whose two offsets disagree is refused (kept_idx -1, rows NaN), never computed.
//
// Every quantity that decides an index uses explicit round-to-nearest intrinsics (__fadd_rn,
// __fmul_rn, __fdiv_rn, __fsqrt_rn), so no product is fused into a sum whatever the flags. The
// kernels use only what tests/cuda_emulation/device_primitives_host.h stands in for, so
// tests/test_zip_tokens_varlen_cuda_emulated.py runs them on the CPU.
#pragma once

#include "device_primitives.cuh"

#include <cstdint>

namespace visionzip::cuda_varlen {

using visionzip::cuda::from_float;
using visionzip::cuda::load_float;

constexpr int kPlanThreads = 512;   // 16 warps: one level of warp totals in the block counts
constexpr int kPlanWarps = kPlanThreads / 32;
constexpr int kTargetsPerPass = 8;  // similarity accumulators per thread and pass over the channels
constexpr int kApplyThreads = 128;  // channels per apply block: 256 contiguous bytes of a bf16 row
constexpr int kApplyTargets = 32;   // target slots per apply block: 16 KiB of float32 sums in shared memory
// Segments per launch: their table is a kernel parameter, within the 4 KiB every device takes.
constexpr int kSegmentsPerLaunch = 96;

// The host's sizes of the segments [first, first + count) of the batch.
struct SegmentTable {
  int64_t first;
  int count;
  int64_t start[kSegmentsPerLaunch];      // first token in T_total
  int64_t out_start[kSegmentsPerLaunch];  // first output row
  int64_t ctx_start[kSegmentsPerLaunch];  // first target slot of the batch
  int n_tokens[kSegmentsPerLaunch], k_dom[kSegmentsPerLaunch], k_ctx[kSegmentsPerLaunch];
};
static_assert(sizeof(SegmentTable) <= 3584, "a launch's segment table and pointers must fit 4 KiB of parameters");

// cu_seqlens on the device, compared there with the table; data == nullptr where the host checked it.
struct CuSeqlens {
  const void* data;
  int64_t stride;
  bool is_int64;
};

struct Segment {
  int64_t start, out_start, ctx_start;
  int n_tokens, k_dom, k_ctx;
  bool refused;  // a device cu_seqlens disagrees with the host's offsets
};

__device__ __forceinline__ int64_t offset_at(const CuSeqlens& cu, int64_t i) {
  return cu.is_int64 ? static_cast<const int64_t*>(cu.data)[i * cu.stride]
                     : static_cast<const int32_t*>(cu.data)[i * cu.stride];
}

__device__ __forceinline__ Segment segment_of(const SegmentTable& table, int local, const CuSeqlens& cu) {
  Segment s{table.start[local], table.out_start[local], table.ctx_start[local],
            table.n_tokens[local], table.k_dom[local], table.k_ctx[local], false};
  if (cu.data != nullptr) {
    const int64_t seg = table.first + local;
    s.refused = offset_at(cu, seg) != s.start || offset_at(cu, seg + 1) != s.start + s.n_tokens;
  }
  return s;
}

// Unsigned key ordering scores like their values (-0.0 and +0.0 equal), non-finite scores as -inf.
__device__ __forceinline__ uint32_t rank_key(float score) {
  const float ranked = isfinite(score) ? (score == 0.f ? 0.f : score) : -INFINITY;
  const uint32_t bits = __float_as_uint(ranked);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

struct BlockCount {
  int before;  // the sum over the threads before this one
  int total;   // the sum over the block
};

// Block-wide sums of kPlanThreads threads' values. The warp totals go through two shared buffers,
// used in turn, so one barrier per call suffices: a thread writes a buffer again only after the
// next call's barrier, which no thread reaches before it has read this call's buffer. Every thread
// of the block must make the same calls.
class BlockCounter {
 public:
  __device__ explicit BlockCounter(int (*warp_totals)[kPlanWarps]) : warp_totals_(warp_totals) {}

  __device__ BlockCount count(int value) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int inclusive = value;
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int up = __shfl_up_sync(0xffffffffu, inclusive, offset);
      if (lane >= offset) inclusive += up;
    }
    int* totals = warp_totals_[parity_];
    parity_ ^= 1;
    if (lane == 31) totals[warp] = inclusive;
    __syncthreads();  // every warp's total written before any is read
    BlockCount result{inclusive - value, 0};
    for (int w = 0; w < kPlanWarps; ++w) {
      if (w < warp) result.before += totals[w];
      result.total += totals[w];
    }
    return result;
  }

 private:
  int (*warp_totals_)[kPlanWarps];
  int parity_ = 0;
};

template <typename key_t>
struct MetricRows {
  const key_t* data;  // the segment's first row
  int64_t stride_t, stride_d;
  int width;

  __device__ float at(int64_t token, int d) const { return load_float(data + token * stride_t + d * stride_d); }

  // L2 norm of row `token`, squares summed in channel order, correctly rounded square root.
  __device__ float norm(int64_t token) const {
    float sum_sq = 0.f;
    for (int d = 0; d < width; ++d) {
      const float x = at(token, d);
      sum_sq = __fadd_rn(sum_sq, __fmul_rn(x, x));
    }
    return __fsqrt_rn(sum_sq);
  }
};

__device__ __forceinline__ float unit_channel(float x, float norm) { return norm > 0.f ? __fdiv_rn(x, norm) : 0.f; }

struct PlanWorkspace {
  int32_t* destination;  // [T_total]
  int32_t* target_tok;   // [target slots]
  int32_t* target_row;   // [target slots]
  float* unit;           // [target slots, Dk]
};

// Block = segment blockIdx.x of `table`. importance [T_total] and keys [T_total, Dk] through
// strides; kept_idx [K_total] and cu_kept [n + 1] int64; workspaces as in the file comment.
template <typename imp_t, typename key_t>
__global__ void __launch_bounds__(kPlanThreads)
    zip_varlen_plan_kernel(const imp_t* importance, int64_t importance_stride, const key_t* keys, int64_t key_stride_t,
                           int64_t key_stride_d, int key_width, const __grid_constant__ SegmentTable table,
                           CuSeqlens cu, PlanWorkspace work, int64_t* kept_idx, int64_t* cu_kept) {
  __shared__ int warp_totals[2][kPlanWarps];
  const int local = blockIdx.x;
  const Segment s = segment_of(table, local, cu);
  const int n_kept = s.k_dom + s.k_ctx;
  if (threadIdx.x == 0) {
    if (table.first + local == 0) cu_kept[0] = 0;
    cu_kept[table.first + local + 1] = s.out_start + n_kept;
  }
  if (s.refused) {
    for (int row = threadIdx.x; row < n_kept; row += kPlanThreads) kept_idx[s.out_start + row] = -1;
    return;
  }
  const imp_t* scores = importance + s.start * importance_stride;
  auto key_of = [&](int j) { return rank_key(load_float(scores + j * importance_stride)); };
  BlockCounter counter(warp_totals);

  // The k_dom-th largest rank key: the largest threshold with at least k_dom keys at or above it.
  uint32_t threshold = 0xFFFFFFFFu;  // above every rank key: no dominant token
  int quota = 0;                     // how many keys equal to the threshold are dominant, lowest index first
  if (s.k_dom > 0) {
    threshold = 0;
    for (int bit = 31; bit >= 0; --bit) {
      const uint32_t candidate = threshold | (1u << bit);
      int count = 0;
      for (int j = threadIdx.x; j < s.n_tokens; j += kPlanThreads) count += key_of(j) >= candidate;
      if (counter.count(count).total >= s.k_dom) threshold = candidate;
    }
    int above = 0;
    for (int j = threadIdx.x; j < s.n_tokens; j += kPlanThreads) above += key_of(j) > threshold;
    quota = s.k_dom - counter.count(above).total;
  }

  // Index order, kPlanThreads tokens per pass (token j on thread j % kPlanThreads): tie ranks,
  // dominant ranks, kept rows; every thread carries the same running totals.
  const MetricRows<key_t> metric{keys + s.start * key_stride_t, key_stride_t, key_stride_d, key_width};
  float* seg_unit = work.unit + s.ctx_start * key_width;
  int32_t* seg_destination = work.destination + s.start;
  const int n_rem = s.n_tokens - s.k_dom;
  const int step = max(1, n_rem / max(s.k_ctx, 1));
  int ties_seen = 0, dominant_seen = 0, kept_seen = 0;
  for (int first = 0; first < s.n_tokens; first += kPlanThreads) {
    const int j = first + threadIdx.x;
    const bool valid = j < s.n_tokens;
    const uint32_t key = valid ? key_of(j) : 0u;
    const bool tie = valid && key == threshold;
    const BlockCount ties = counter.count(tie);
    const bool dominant = valid && (key > threshold || (tie && ties_seen + ties.before < quota));
    const BlockCount dominants = counter.count(dominant);
    const int rem_pos = j - (dominant_seen + dominants.before);
    const bool target = valid && !dominant && rem_pos % step == 0 && rem_pos < s.k_ctx * step;
    const BlockCount kept = counter.count(dominant || target);
    const int out_row = kept_seen + kept.before;
    if (valid) seg_destination[j] = dominant ? -2 - out_row : (target ? -1 : 0);
    if (dominant || target) kept_idx[s.out_start + out_row] = s.start + j;
    if (target) {
      const int64_t slot = s.ctx_start + rem_pos / step;
      work.target_tok[slot] = j;
      work.target_row[slot] = out_row;
      const float norm = metric.norm(j);
      float* unit = work.unit + slot * key_width;
      for (int d = 0; d < key_width; ++d) unit[d] = unit_channel(metric.at(j, d), norm);
    }
    ties_seen += ties.total;
    dominant_seen += dominants.total;
    kept_seen += kept.total;
  }
  if (s.k_ctx == 0) return;
  __syncthreads();  // every target's unit key written before any merge token reads it

  // Each merge token's target: the first largest similarity, NaN never winning. Token j was
  // numbered by this same thread above.
  for (int j = threadIdx.x; j < s.n_tokens; j += kPlanThreads) {
    if (seg_destination[j] != 0) continue;
    const float norm = metric.norm(j);
    float best = -INFINITY;
    int best_slot = 0;
    for (int t0 = 0; t0 < s.k_ctx; t0 += kTargetsPerPass) {
      float acc[kTargetsPerPass] = {};
      for (int d = 0; d < key_width; ++d) {
        const float u = unit_channel(metric.at(j, d), norm);
#pragma unroll
        for (int w = 0; w < kTargetsPerPass; ++w) {
          if (t0 + w < s.k_ctx) acc[w] = __fadd_rn(acc[w], __fmul_rn(u, seg_unit[(t0 + w) * key_width + d]));
        }
      }
#pragma unroll
      for (int w = 0; w < kTargetsPerPass; ++w) {
        if (t0 + w < s.k_ctx && acc[w] > best) {  // strict: a later equal target never wins; NaN never
          best = acc[w];
          best_slot = t0 + w;
        }
      }
    }
    seg_destination[j] = best_slot;
  }
}

// The block's thread that counts the members of its target slots (any one thread may).
constexpr int kCountingThread = kApplyThreads - 1;

// Block = (segment blockIdx.x / target_blocks of `table`, target slots [32 b, 32 b + 32) with
// b = blockIdx.x % target_blocks, channels [128 blockIdx.y, + 128)); thread = one channel. The
// blocks of b = 0 also copy the dominant rows. hidden [T_total, D] through strides; tokens
// [K_total, D] contiguous.
template <typename T>
__global__ void __launch_bounds__(kApplyThreads)
    zip_varlen_apply_kernel(const T* hidden, int64_t stride_t, int64_t stride_d, int width,
                            const __grid_constant__ SegmentTable table, int target_blocks, CuSeqlens cu,
                            const int32_t* destination, const int32_t* target_tok, const int32_t* target_row,
                            T* tokens) {
  __shared__ float sums[kApplyTargets][kApplyThreads];  // column threadIdx.x: this thread's alone
  __shared__ int members[kApplyTargets];                // written by kCountingThread alone
  const int local = blockIdx.x / target_blocks, target_block = blockIdx.x % target_blocks;
  const Segment s = segment_of(table, local, cu);
  const int n_kept = s.k_dom + s.k_ctx;
  const int slot0 = target_block * kApplyTargets;
  const int channel = blockIdx.y * kApplyThreads + threadIdx.x;
  const bool has_channel = channel < width;
  T* out = tokens + s.out_start * static_cast<int64_t>(width) + (has_channel ? channel : 0);
  if (s.refused) {
    if (target_block == 0 && has_channel) {
      for (int row = 0; row < n_kept; ++row) out[row * static_cast<int64_t>(width)] = from_float<T>(NAN);
    }
    return;
  }
  if (target_block > 0 && slot0 >= s.k_ctx) return;
  const T* seg_hidden = hidden + s.start * stride_t + (has_channel ? channel : 0) * stride_d;
  const int32_t* seg_destination = destination + s.start;
  const bool copies_dominant = target_block == 0;
  const int slot_end = min(slot0 + kApplyTargets, s.k_ctx);

  for (int t = 0; t < kApplyTargets; ++t) sums[t][threadIdx.x] = 0.f;
  if (threadIdx.x == kCountingThread) {
    for (int t = 0; t < kApplyTargets; ++t) members[t] = 0;
  }
  for (int j = 0; j < s.n_tokens; ++j) {
    const int32_t dest = seg_destination[j];
    if (dest <= -2) {
      if (copies_dominant && has_channel) out[(-2 - dest) * static_cast<int64_t>(width)] = seg_hidden[j * stride_t];
    } else if (dest >= slot0 && dest < slot_end) {
      if (has_channel) sums[dest - slot0][threadIdx.x] += load_float(seg_hidden + j * stride_t);
      if (threadIdx.x == kCountingThread) ++members[dest - slot0];
    }
  }
  __syncthreads();  // the members counted before any thread divides by them
  if (!has_channel) return;
  for (int t = 0; slot0 + t < slot_end; ++t) {
    const int64_t slot = s.ctx_start + slot0 + t;
    const float target = load_float(seg_hidden + static_cast<int64_t>(target_tok[slot]) * stride_t);
    const float mean = members[t] > 0 ? __fdiv_rn(sums[t][threadIdx.x], static_cast<float>(members[t])) : 0.f;
    out[target_row[slot] * static_cast<int64_t>(width)] = from_float<T>(__fadd_rn(target, mean));
  }
}

}  // namespace visionzip::cuda_varlen
