// C++ CPU kernel of visionzip::zip_tokens_varlen, registered as _zip_tokens_varlen_cpu.
//
// Per segment (image) of the packed batch, zip_tokens' contract with no CLS token and the segment's
// importance as its scores (docs/CONTRACT.md), in the published Qwen2.5-VL output order: the kept
// tokens (dominant and contextual targets) in ascending index order, a target's row being
// hidden[target] + mean(hidden[merged]). Two phases, each parallel with at::parallel_for:
//   1. plan, per segment: zip_tokens' plan_image (zip_plan.h) on the segment's [1, T_i] importance
//      and [1, T_i, Dk] keys, so the same fixed float32 order and tie rules; then the kept tokens in
//      index order (a merge of the ascending dominant and target lists).
//   2. apply, per (segment, block of channels): accumulate each merge token into its target's
//      float32 sum, then write the kept rows in order, dominant rows copied exactly and each target
//      row hidden[target] + sum / count, rounded once.
// The entry point checks everything the kernels rely on (shapes, devices, offsets against the host
// sizes and budgets), so no input can make it read or write out of bounds.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "half_rows.h"
#include "zip_plan.h"
#include "zip_tokens_varlen_checks.h"

namespace visionzip {
namespace {

using at::Tensor;

constexpr int64_t kChannelBlock = 256;  // 1 KiB of float32 per accumulator row: T rows stay in L1/L2

// One segment's plan and its output rows in index order.
struct SegmentPlan {
  ImagePlan image;
  std::vector<int64_t> dominant_idx;  // [k_dom] segment-local, ascending
  std::vector<int64_t> kept_idx;      // [k_dom + k_ctx] segment-local, ascending
  std::vector<int32_t> kept_target;   // [k_dom + k_ctx] target slot of each kept row, -1 if dominant
};

// kept_idx and kept_target: the ascending dominant and target lists merged in index order.
void order_kept(SegmentPlan& plan) {
  const auto& dominant = plan.dominant_idx;
  const auto& targets = plan.image.target_idx;
  plan.kept_idx.clear();
  plan.kept_target.clear();
  size_t d = 0, t = 0;
  while (d < dominant.size() || t < targets.size()) {
    if (t == targets.size() || (d < dominant.size() && dominant[d] < targets[t])) {
      plan.kept_idx.push_back(dominant[d++]);
      plan.kept_target.push_back(-1);
    } else {
      plan.kept_target.push_back(static_cast<int32_t>(t));
      plan.kept_idx.push_back(targets[t++]);
    }
  }
}

// Writes channels [c0, c1) of one segment's kept rows, starting at output row `out_row`.
template <typename scalar_t>
void apply_segment_block(const Tensor& hidden, int64_t start, const SegmentPlan& plan, int64_t out_row,
                         int64_t c0, int64_t c1, Tensor& tokens, std::vector<float>& sums) {
  const ImagePlan& image = plan.image;
  const int64_t k_ctx = static_cast<int64_t>(image.target_idx.size());
  const int64_t n_chan = c1 - c0;
  const scalar_t* h_base = hidden.data_ptr<scalar_t>() + start * hidden.stride(0) + c0;
  const int64_t h_row = hidden.stride(0);
  scalar_t* out = tokens.data_ptr<scalar_t>() + out_row * tokens.stride(0) + c0;
  const int64_t out_stride = tokens.stride(0);

  sums.assign(k_ctx * n_chan, 0.f);
  for (size_t m = 0; m < image.merge_idx.size(); ++m) {
    const scalar_t* src = h_base + image.merge_idx[m] * h_row;
    float* acc = sums.data() + image.merge_assign[m] * n_chan;
    if constexpr (std::is_same_v<scalar_t, c10::Half>) {
      add_half_row(src, acc, n_chan);
    } else {
      for (int64_t c = 0; c < n_chan; ++c) acc[c] += static_cast<float>(src[c]);
    }
  }
  for (size_t r = 0; r < plan.kept_idx.size(); ++r) {
    const scalar_t* src = h_base + plan.kept_idx[r] * h_row;
    scalar_t* dst = out + static_cast<int64_t>(r) * out_stride;
    const int32_t t = plan.kept_target[r];
    if (t < 0) {
      std::memcpy(dst, src, n_chan * sizeof(scalar_t));
      continue;
    }
    const float* acc = sums.data() + t * n_chan;
    const float inv = image.inv_count[t];
    for (int64_t c = 0; c < n_chan; ++c) dst[c] = static_cast<scalar_t>(static_cast<float>(src[c]) + acc[c] * inv);
  }
}

// Offsets [n + 1] of `counts`.
std::vector<int64_t> offsets_of(c10::IntArrayRef counts) {
  std::vector<int64_t> result(counts.size() + 1, 0);
  for (size_t i = 0; i < counts.size(); ++i) result[i + 1] = result[i] + counts[i];
  return result;
}

std::tuple<Tensor, Tensor, Tensor> zip_tokens_varlen_cpu(const Tensor& hidden_in, const Tensor& importance,
                                                         const Tensor& cu_seqlens, c10::IntArrayRef seqlens,
                                                         c10::IntArrayRef k_dom, c10::IntArrayRef k_ctx,
                                                         const std::optional<Tensor>& keys) {
  check_zip_tokens_varlen_args(hidden_in, importance, cu_seqlens, seqlens, k_dom, k_ctx, keys, c10::DeviceType::CPU, "cpu");
  const Tensor hidden = hidden_in.stride(1) == 1 ? hidden_in : hidden_in.contiguous();
  const int64_t n = static_cast<int64_t>(seqlens.size()), width = hidden.size(1);
  const std::vector<int64_t> starts = offsets_of(seqlens);
  std::vector<int64_t> kept_counts(n);
  for (int64_t i = 0; i < n; ++i) kept_counts[i] = k_dom[i] + k_ctx[i];
  const std::vector<int64_t> out_rows = offsets_of(kept_counts);
  Tensor tokens = at::empty({out_rows[n], width}, hidden.options());
  Tensor kept_idx = at::empty({out_rows[n]}, hidden.options().dtype(at::kLong));
  Tensor cu_kept = at::tensor(out_rows, hidden.options().dtype(at::kLong));
  if (out_rows[n] == 0) return {tokens, kept_idx, cu_kept};

  const Tensor& metric = keys.has_value() ? *keys : hidden;
  std::vector<SegmentPlan> plans(n);
  for (int64_t i = 0; i < n; ++i) {
    plans[i].dominant_idx.resize(k_dom[i]);
    plans[i].image.target_idx.resize(k_ctx[i]);
    plans[i].image.inv_count.resize(k_ctx[i]);
  }
  int64_t* kept_out = kept_idx.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, importance.scalar_type(), "zip_tokens_varlen_cpu_plan", [&] {
    using attn_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, metric.scalar_type(), "zip_tokens_varlen_cpu_plan", [&] {
      at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const Tensor scores = importance.narrow(0, starts[i], seqlens[i]).unsqueeze(0);
          const Tensor segment_metric = metric.narrow(0, starts[i], seqlens[i]).unsqueeze(0);
          plan_image<attn_t, scalar_t>(scores, segment_metric, 0, k_dom[i], k_ctx[i], /*has_cls=*/false,
                                       plans[i].dominant_idx.data(), plans[i].image);
          order_kept(plans[i]);
          for (int64_t r = 0; r < kept_counts[i]; ++r) kept_out[out_rows[i] + r] = starts[i] + plans[i].kept_idx[r];
        }
      });
    });
  });

  const int64_t n_blocks = (width + kChannelBlock - 1) / kChannelBlock;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hidden.scalar_type(), "zip_tokens_varlen_cpu_apply", [&] {
    at::parallel_for(0, n * n_blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> sums;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t i = item / n_blocks;
        const int64_t c0 = (item % n_blocks) * kChannelBlock;
        apply_segment_block<scalar_t>(hidden, starts[i], plans[i], out_rows[i], c0,
                                      std::min(width, c0 + kChannelBlock), tokens, sums);
      }
    });
  });
  return {tokens, kept_idx, cu_kept};
}

}  // namespace

TORCH_LIBRARY_IMPL(visionzip, CPU, m) {
  m.impl("_zip_tokens_varlen_cpu", &zip_tokens_varlen_cpu);
}

}  // namespace visionzip
