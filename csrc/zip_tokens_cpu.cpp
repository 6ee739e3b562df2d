// C++ CPU kernel of visionzip::zip_tokens (docs/CONTRACT.md), registered as _zip_tokens_cpu.
//
// Two phases, each parallel with at::parallel_for:
//   1. plan, per image (plan_image, zip_plan.h): head-reduced scores, top-k_dom (ties to the lower
//      index, non-finite last), ascending dominant indices, the remaining list, the target/merge
//      split, unit keys and the argmax assignment (ties to the lower target), every quantity that
//      decides an index in the contract's fixed float32 order. Built with -ffp-contract=off, so
//      no product is fused into a sum.
//   2. apply, per (image, block of channels): copy the dominant rows, then accumulate each merge
//      token into its target's float32 sum and write hidden[target] + sum / count, rounded once.
// The entry point checks its arguments first (zip_tokens_checks.h, the Python validation's checks
// and messages), so the kernels below see only inputs the contract accepts. `hidden` is read through
// its batch and token strides with contiguous channels (copied once otherwise); `attn` and `keys` are read
// through their strides.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "half_rows.h"
#include "zip_plan.h"
#include "zip_tokens_checks.h"

namespace visionzip {
namespace {

using at::Tensor;

constexpr int64_t kChannelBlock = 256;  // 1 KiB of float32 per accumulator row: T rows stay in L1/L2

// Writes tokens[b, :, c0:c1] from hidden rows and the plan.
template <typename scalar_t>
void apply_block(const Tensor& hidden, const int64_t* dominant, const ImagePlan& plan, int64_t b,
                 int64_t c0, int64_t c1, Tensor& tokens, std::vector<float>& sums) {
  const int64_t k_dom = tokens.size(1) - static_cast<int64_t>(plan.target_idx.size());
  const int64_t k_ctx = static_cast<int64_t>(plan.target_idx.size());
  const int64_t n_chan = c1 - c0;
  const scalar_t* h_base = hidden.data_ptr<scalar_t>() + b * hidden.stride(0) + c0;
  const int64_t h_row = hidden.stride(1);
  scalar_t* out = tokens.data_ptr<scalar_t>() + b * tokens.stride(0) + c0;
  const int64_t out_row = tokens.stride(1);

  for (int64_t i = 0; i < k_dom; ++i) {
    std::memcpy(out + i * out_row, h_base + dominant[i] * h_row, n_chan * sizeof(scalar_t));
  }
  if (k_ctx == 0) return;
  sums.assign(k_ctx * n_chan, 0.f);
  for (size_t m = 0; m < plan.merge_idx.size(); ++m) {
    const scalar_t* src = h_base + plan.merge_idx[m] * h_row;
    float* acc = sums.data() + plan.merge_assign[m] * n_chan;
    if constexpr (std::is_same_v<scalar_t, c10::Half>) {
      add_half_row(src, acc, n_chan);
    } else {
      for (int64_t c = 0; c < n_chan; ++c) acc[c] += static_cast<float>(src[c]);
    }
  }
  for (int64_t t = 0; t < k_ctx; ++t) {
    const scalar_t* target = h_base + plan.target_idx[t] * h_row;
    const float* acc = sums.data() + t * n_chan;
    const float inv = plan.inv_count[t];
    scalar_t* dst = out + (k_dom + t) * out_row;
    for (int64_t c = 0; c < n_chan; ++c) {
      dst[c] = static_cast<scalar_t>(static_cast<float>(target[c]) + acc[c] * inv);
    }
  }
}

std::tuple<Tensor, Tensor> zip_tokens_cpu(const Tensor& hidden_in, const Tensor& attn, int64_t k_dom,
                                          int64_t k_ctx, const std::optional<Tensor>& keys, bool has_cls) {
  check_zip_tokens_args(hidden_in, attn, k_dom, k_ctx, keys, has_cls);
  const Tensor hidden = hidden_in.stride(2) == 1 ? hidden_in : hidden_in.contiguous();
  const int64_t batch = hidden.size(0), width = hidden.size(2);
  Tensor tokens = at::empty({batch, k_dom + k_ctx, width}, hidden.options());
  Tensor dominant_idx = at::empty({batch, k_dom}, hidden.options().dtype(at::kLong));
  if (batch == 0) return {tokens, dominant_idx};

  const Tensor& metric = keys.has_value() ? *keys : hidden;
  std::vector<ImagePlan> plans(batch);
  for (auto& plan : plans) {
    plan.target_idx.resize(k_ctx);
    plan.inv_count.resize(k_ctx);
  }
  int64_t* dominant = dominant_idx.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, attn.scalar_type(), "zip_tokens_cpu_plan", [&] {
    using attn_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, metric.scalar_type(), "zip_tokens_cpu_plan", [&] {
      at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          plan_image<attn_t, scalar_t>(attn, metric, b, k_dom, k_ctx, has_cls, dominant + b * k_dom, plans[b]);
        }
      });
    });
  });

  const int64_t n_blocks = (width + kChannelBlock - 1) / kChannelBlock;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hidden.scalar_type(), "zip_tokens_cpu_apply", [&] {
    at::parallel_for(0, batch * n_blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> sums;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / n_blocks;
        const int64_t c0 = (item % n_blocks) * kChannelBlock;
        apply_block<scalar_t>(hidden, dominant + b * k_dom, plans[b], b, c0, std::min(width, c0 + kChannelBlock),
                              tokens, sums);
      }
    });
  });
  return {tokens, dominant_idx};
}

}  // namespace

TORCH_LIBRARY_IMPL(visionzip, CPU, m) {
  m.impl("_zip_tokens_cpu", &zip_tokens_cpu);
}

}  // namespace visionzip
