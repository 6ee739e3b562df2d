// CUDA C++ kernels of visionzip::zip_tokens_varlen (docs/CONTRACT.md, "the varlen ops"),
// registered as _zip_tokens_varlen_cuda. The same algorithm as the Triton backend
// (visionzip_kernels/ops/zip_tokens_varlen/triton_kernels.py), one block per segment:
//   1. zip_varlen_plan_kernel, grid n, kPlanThreads threads: the top-k_dom of the segment's
//      importance by a bitwise search for the k-th largest rank key (ties to the lower index,
//      non-finite last), block scans in index order that number the dominant tokens, the
//      remaining positions and the kept rows (dominant and targets, in index order), then the unit
//      keys of the targets and each merge token's target (similarities summed in channel order,
//      the first largest wins, NaN never); writes kept_idx and the int32 workspaces.
//   2. zip_varlen_apply_kernel, grid n x channel blocks x target blocks, kApplyThreads threads (one
//      channel each): copies the dominant rows, sums each target's merge rows in index order in
//      float32 and writes hidden[target] + sum / count, rounded once, at the target's row.
// Workspaces: destination int32 [T_total] (-2 - r: dominant of output row r; -1: target;
// t >= 0: merge token of target slot t), target_tok and target_row int32 [n, max_ctx] (segment-local
// token and output row of each target slot), unit float [n, max_ctx, Dk] (the targets' unit keys).
// Every quantity that decides an index uses explicit round-to-nearest intrinsics (__fadd_rn,
// __fmul_rn, __fdiv_rn, __fsqrt_rn), so no product is fused into a sum whatever the flags.
// Per-segment numbers are read on the device (cu_seqlens, and budgets copied from the host); sizes
// are clamped so that offsets that disagree with the host's sizes never index out of bounds.
// No host synchronisation. Compile-checked only (make cuda-check): no GPU has run this file yet.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

namespace visionzip::cuda_varlen {
namespace {

using at::Tensor;

constexpr int kPlanThreads = 512;   // 16 warps: one shuffle level of the block scan's warp totals
constexpr int kPlanWarps = kPlanThreads / 32;
constexpr int kTargetsPerPass = 8;  // similarity accumulators per thread and pass over the channels
constexpr int kApplyThreads = 128;  // channels per apply block: 256 contiguous bytes of a bf16 row
constexpr int kApplyTargets = 32;   // target slots per apply block: 16 KiB of float32 sums in shared memory

struct Segment {
  int64_t start;
  int n_tokens, k_dom, k_ctx;
  int64_t out_start;
};

// Segment `seg`: offsets clamped to [0, total], size to max_tokens.
__device__ Segment load_segment(const int64_t* cu, const int64_t* budgets, int64_t seg, int64_t total,
                                int max_tokens) {
  Segment s;
  s.start = min(max(cu[seg], int64_t{0}), total);
  const int64_t stop = min(max(cu[seg + 1], s.start), total);
  s.n_tokens = static_cast<int>(min(stop - s.start, static_cast<int64_t>(max_tokens)));
  s.k_dom = static_cast<int>(budgets[3 * seg]);
  s.k_ctx = static_cast<int>(budgets[3 * seg + 1]);
  s.out_start = budgets[3 * seg + 2];
  return s;
}

// Unsigned key ordering scores like their values (-0.0 and +0.0 equal), non-finite scores as -inf.
__device__ __forceinline__ uint32_t rank_key(float score) {
  const float ranked = isfinite(score) ? (score == 0.f ? 0.f : score) : -INFINITY;
  const uint32_t bits = __float_as_uint(ranked);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Sum of `value` over the block; every thread gets it. scratch: kPlanWarps ints.
__device__ int block_sum(int value, int* scratch) {
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = value;
  __syncthreads();
  int total = 0;
  for (int w = 0; w < kPlanWarps; ++w) total += scratch[w];
  __syncthreads();
  return total;
}

// Exclusive prefix sum of `value` in thread order, and the block total. scratch: kPlanWarps ints.
__device__ int block_exclusive_scan(int value, int* scratch, int& total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int inclusive = value;
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int up = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += up;
  }
  if (lane == 31) scratch[warp] = inclusive;
  __syncthreads();
  int before = 0;
  total = 0;
  for (int w = 0; w < kPlanWarps; ++w) {
    if (w < warp) before += scratch[w];
    total += scratch[w];
  }
  __syncthreads();
  return before + inclusive - value;
}

template <typename key_t>
__device__ float metric_at(const key_t* keys, int64_t key_stride_t, int64_t key_stride_d, int64_t token, int d) {
  return static_cast<float>(keys[token * key_stride_t + d * key_stride_d]);
}

// L2 norm of a metric row, squares summed in channel order, correctly rounded square root.
template <typename key_t>
__device__ float metric_norm(const key_t* keys, int64_t stride_t, int64_t stride_d, int64_t token, int width) {
  float sum_sq = 0.f;
  for (int d = 0; d < width; ++d) {
    const float x = metric_at(keys, stride_t, stride_d, token, d);
    sum_sq = __fadd_rn(sum_sq, __fmul_rn(x, x));
  }
  return __fsqrt_rn(sum_sq);
}

__device__ __forceinline__ float unit_channel(float x, float norm) { return norm > 0.f ? __fdiv_rn(x, norm) : 0.f; }

// One block per segment; see the file comment. importance [T_total] and keys [T_total, Dk] through
// strides; kept_idx [K_total] int64; workspaces as in the file comment.
template <typename imp_t, typename key_t>
__global__ void __launch_bounds__(kPlanThreads)
    zip_varlen_plan_kernel(const imp_t* importance, int64_t importance_stride, const key_t* keys, int64_t key_stride_t,
                           int64_t key_stride_d, int key_width, const int64_t* cu, const int64_t* budgets,
                           int64_t total, int max_tokens, int max_ctx, int64_t* kept_idx, int32_t* destination,
                           int32_t* target_tok, int32_t* target_row, float* unit) {
  __shared__ int scratch[kPlanWarps];
  __shared__ int carry[3];
  const int64_t seg = blockIdx.x;
  const Segment s = load_segment(cu, budgets, seg, total, max_tokens);
  const int n_kept = s.k_dom + s.k_ctx;
  const imp_t* scores = importance + s.start * importance_stride;
  auto key_of = [&](int j) { return rank_key(static_cast<float>(scores[j * importance_stride])); };

  // The k_dom-th largest rank key: the largest threshold with at least k_dom keys at or above it.
  uint32_t threshold = 0xFFFFFFFFu;
  int quota = 0;  // how many keys equal to the threshold are dominant, lowest index first
  if (s.k_dom > 0) {
    threshold = 0;
    for (int bit = 31; bit >= 0; --bit) {
      const uint32_t candidate = threshold | (1u << bit);
      int count = 0;
      for (int j = threadIdx.x; j < s.n_tokens; j += kPlanThreads) count += key_of(j) >= candidate;
      if (block_sum(count, scratch) >= s.k_dom) threshold = candidate;
    }
    int above = 0;
    for (int j = threadIdx.x; j < s.n_tokens; j += kPlanThreads) above += key_of(j) > threshold;
    quota = s.k_dom - block_sum(above, scratch);
  }

  // Index order, kPlanThreads tokens per pass: tie ranks, dominant ranks, kept rows.
  const int n_rem = s.n_tokens - s.k_dom;
  const int step = max(1, n_rem / max(s.k_ctx, 1));
  if (threadIdx.x < 3) carry[threadIdx.x] = 0;  // ties, dominant and kept tokens before this pass
  __syncthreads();
  int32_t* seg_destination = destination + s.start;
  for (int first = 0; first < s.n_tokens; first += kPlanThreads) {
    const int j = first + threadIdx.x;
    const bool valid = j < s.n_tokens;
    const uint32_t key = valid ? key_of(j) : 0u;
    int pass_total;
    const int tie = valid && key == threshold;
    const int ties_before = carry[0] + block_exclusive_scan(tie, scratch, pass_total);
    const int ties_total = pass_total;
    const bool dominant = valid && (key > threshold || (tie && ties_before < quota));
    const int dominant_before = carry[1] + block_exclusive_scan(dominant, scratch, pass_total);
    const int dominant_total = pass_total;
    const int rem_pos = j - dominant_before;
    const bool target = valid && !dominant && rem_pos % step == 0 && rem_pos < s.k_ctx * step;
    const int out_row = carry[2] + block_exclusive_scan(dominant || target, scratch, pass_total);
    if (valid) {
      seg_destination[j] = dominant ? -2 - out_row : (target ? -1 : 0);
      if ((dominant || target) && out_row < n_kept) kept_idx[s.out_start + out_row] = s.start + j;
      if (target) {
        target_tok[seg * max_ctx + rem_pos / step] = j;
        target_row[seg * max_ctx + rem_pos / step] = out_row;
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      carry[0] += ties_total;
      carry[1] += dominant_total;
      carry[2] += pass_total;
    }
    __syncthreads();
  }
  if (s.k_ctx == 0) return;

  // Unit keys of the targets.
  const key_t* seg_keys = keys + s.start * key_stride_t;
  float* seg_unit = unit + seg * max_ctx * static_cast<int64_t>(key_width);
  for (int t = threadIdx.x; t < s.k_ctx; t += kPlanThreads) {
    const int64_t token = target_tok[seg * max_ctx + t];
    const float norm = metric_norm(seg_keys, key_stride_t, key_stride_d, token, key_width);
    for (int d = 0; d < key_width; ++d) {
      seg_unit[t * key_width + d] = unit_channel(metric_at(seg_keys, key_stride_t, key_stride_d, token, d), norm);
    }
  }
  __syncthreads();

  // Each merge token's target: the first largest similarity, NaN never winning.
  for (int j = threadIdx.x; j < s.n_tokens; j += kPlanThreads) {
    if (seg_destination[j] != 0) continue;
    const float norm = metric_norm(seg_keys, key_stride_t, key_stride_d, j, key_width);
    float best = -INFINITY;
    int best_slot = 0;
    for (int t0 = 0; t0 < s.k_ctx; t0 += kTargetsPerPass) {
      float acc[kTargetsPerPass] = {};
      for (int d = 0; d < key_width; ++d) {
        const float u = unit_channel(metric_at(seg_keys, key_stride_t, key_stride_d, j, d), norm);
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

// Block (segment, channel block, target block); thread = one channel. hidden [T_total, D] through
// strides; tokens [K_total, D] contiguous.
template <typename T>
__global__ void __launch_bounds__(kApplyThreads)
    zip_varlen_apply_kernel(const T* hidden, int64_t stride_t, int64_t stride_d, int width, const int64_t* cu,
                            const int64_t* budgets, int64_t total, int max_tokens, int max_ctx,
                            const int32_t* destination, const int32_t* target_tok, const int32_t* target_row,
                            T* tokens) {
  __shared__ float sums[kApplyTargets][kApplyThreads];
  __shared__ int members[kApplyTargets];
  const int64_t seg = blockIdx.x;
  const Segment s = load_segment(cu, budgets, seg, total, max_tokens);
  const int n_kept = s.k_dom + s.k_ctx;
  const int channel = blockIdx.y * kApplyThreads + threadIdx.x;
  const bool has_channel = channel < width;
  const int slot0 = blockIdx.z * kApplyTargets;
  const bool copies_dominant = blockIdx.z == 0;
  const T* seg_hidden = hidden + s.start * stride_t + (has_channel ? channel : 0) * stride_d;
  T* out = tokens + s.out_start * static_cast<int64_t>(width) + (has_channel ? channel : 0);
  const int32_t* seg_destination = destination + s.start;

  for (int t = 0; t < kApplyTargets; ++t) sums[t][threadIdx.x] = 0.f;
  if (threadIdx.x < kApplyTargets) members[threadIdx.x] = 0;
  __syncthreads();
  for (int j = 0; j < s.n_tokens; ++j) {
    const int32_t dest = seg_destination[j];
    if (dest <= -2) {
      const int row = -2 - dest;
      if (copies_dominant && has_channel && row < n_kept) out[row * static_cast<int64_t>(width)] = seg_hidden[j * stride_t];
    } else if (dest >= slot0 && dest < slot0 + kApplyTargets && dest < s.k_ctx) {
      if (has_channel) sums[dest - slot0][threadIdx.x] += static_cast<float>(seg_hidden[j * stride_t]);
      if (threadIdx.x == 0) ++members[dest - slot0];
    }
  }
  __syncthreads();
  for (int t = 0; t < kApplyTargets; ++t) {
    const int slot = slot0 + t;
    if (slot >= s.k_ctx || !has_channel) break;
    const int row = target_row[seg * max_ctx + slot];
    if (row >= n_kept) continue;
    const float target = static_cast<float>(seg_hidden[static_cast<int64_t>(target_tok[seg * max_ctx + slot]) * stride_t]);
    const float mean = members[t] > 0 ? __fdiv_rn(sums[t][threadIdx.x], static_cast<float>(members[t])) : 0.f;
    out[row * static_cast<int64_t>(width)] = static_cast<T>(__fadd_rn(target, mean));
  }
}

#define VISIONZIP_VARLEN_DISPATCH_FLOAT(TYPE, NAME, ...)                            \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)          \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)       \
                                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

std::tuple<Tensor, Tensor, Tensor> zip_tokens_varlen_cuda(const Tensor& hidden, const Tensor& importance,
                                                          const Tensor& cu_seqlens, c10::IntArrayRef seqlens,
                                                          c10::IntArrayRef k_dom, c10::IntArrayRef k_ctx,
                                                          const std::optional<Tensor>& keys) {
  TORCH_CHECK(hidden.is_cuda() && importance.device() == hidden.device() &&
                  (!keys.has_value() || keys->device() == hidden.device()) &&
                  (cu_seqlens.is_cpu() || cu_seqlens.device() == hidden.device()),
              "zip_tokens_varlen: backend='cuda' takes tensors on one CUDA device (cu_seqlens may be on the CPU)");
  TORCH_CHECK(hidden.dim() == 2 && importance.dim() == 1 && importance.size(0) == hidden.size(0),
              "zip_tokens_varlen: hidden must be [T_total, D] and importance [T_total]");
  TORCH_CHECK(!keys.has_value() || (keys->dim() == 2 && keys->size(0) == hidden.size(0) && keys->size(1) >= 1),
              "zip_tokens_varlen: keys must be [T_total, Dk]");
  const int64_t n = static_cast<int64_t>(seqlens.size());
  TORCH_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.size(0) == n + 1 && static_cast<int64_t>(k_dom.size()) == n &&
                  static_cast<int64_t>(k_ctx.size()) == n,
              "zip_tokens_varlen: cu_seqlens, seqlens, k_dom and k_ctx must describe the same segments");
  const c10::cuda::CUDAGuard device_guard(hidden.device());
  const int64_t total = hidden.size(0), width = hidden.size(1);
  std::vector<int64_t> host_budgets(3 * n), out_offsets(n + 1, 0);
  int64_t max_tokens = 0, max_ctx = 1;
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(seqlens[i] >= 0 && k_dom[i] >= 0 && k_ctx[i] >= 0 && k_dom[i] + k_ctx[i] <= seqlens[i],
                "zip_tokens_varlen: every segment must keep between 0 and its size tokens");
    host_budgets[3 * i] = k_dom[i];
    host_budgets[3 * i + 1] = k_ctx[i];
    host_budgets[3 * i + 2] = out_offsets[i];
    out_offsets[i + 1] = out_offsets[i] + k_dom[i] + k_ctx[i];
    max_tokens = std::max(max_tokens, seqlens[i]);
    max_ctx = std::max(max_ctx, k_ctx[i]);
  }
  TORCH_CHECK(max_tokens <= std::numeric_limits<int32_t>::max() / 2, "zip_tokens_varlen: segment too large");
  const auto long_options = hidden.options().dtype(at::kLong);
  Tensor tokens = at::empty({out_offsets[n], width}, hidden.options());
  Tensor kept_idx = at::empty({out_offsets[n]}, long_options);
  Tensor cu_kept = at::tensor(out_offsets, at::kLong).to(hidden.device(), /*non_blocking=*/true);
  if (out_offsets[n] == 0) return {tokens, kept_idx, cu_kept};

  const Tensor budgets = at::tensor(host_budgets, at::kLong).to(hidden.device(), /*non_blocking=*/true);
  const Tensor cu = cu_seqlens.to(hidden.device(), at::kLong).contiguous();
  const Tensor& metric = keys.has_value() ? *keys : hidden;
  const int key_width = static_cast<int>(metric.size(1));
  Tensor destination = at::empty({total}, hidden.options().dtype(at::kInt));
  Tensor target_tok = at::empty({n, max_ctx}, hidden.options().dtype(at::kInt));
  Tensor target_row = at::empty({n, max_ctx}, hidden.options().dtype(at::kInt));
  Tensor unit = at::empty({n, max_ctx, key_width}, hidden.options().dtype(at::kFloat));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  VISIONZIP_VARLEN_DISPATCH_FLOAT(importance.scalar_type(), "zip_tokens_varlen_cuda_plan", [&] {
    using imp_t = scalar_t;
    VISIONZIP_VARLEN_DISPATCH_FLOAT(metric.scalar_type(), "zip_tokens_varlen_cuda_plan", [&] {
      zip_varlen_plan_kernel<imp_t, scalar_t><<<static_cast<unsigned>(n), kPlanThreads, 0, stream>>>(
          importance.const_data_ptr<imp_t>(), importance.stride(0), metric.const_data_ptr<scalar_t>(),
          metric.stride(0), metric.stride(1), key_width, cu.const_data_ptr<int64_t>(),
          budgets.const_data_ptr<int64_t>(), total, static_cast<int>(max_tokens), static_cast<int>(max_ctx),
          kept_idx.mutable_data_ptr<int64_t>(), destination.mutable_data_ptr<int32_t>(),
          target_tok.mutable_data_ptr<int32_t>(), target_row.mutable_data_ptr<int32_t>(),
          unit.mutable_data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>((width + kApplyThreads - 1) / kApplyThreads),
                  static_cast<unsigned>((max_ctx + kApplyTargets - 1) / kApplyTargets));
  VISIONZIP_VARLEN_DISPATCH_FLOAT(hidden.scalar_type(), "zip_tokens_varlen_cuda_apply", [&] {
    zip_varlen_apply_kernel<scalar_t><<<grid, kApplyThreads, 0, stream>>>(
        hidden.const_data_ptr<scalar_t>(), hidden.stride(0), hidden.stride(1), static_cast<int>(width),
        cu.const_data_ptr<int64_t>(), budgets.const_data_ptr<int64_t>(), total, static_cast<int>(max_tokens),
        static_cast<int>(max_ctx), destination.const_data_ptr<int32_t>(), target_tok.const_data_ptr<int32_t>(),
        target_row.const_data_ptr<int32_t>(), tokens.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {tokens, kept_idx, cu_kept};
}

}  // namespace

TORCH_LIBRARY_IMPL(visionzip, CUDA, m) {
  m.impl("_zip_tokens_varlen_cuda", &zip_tokens_varlen_cuda);
}

}  // namespace visionzip::cuda_varlen
