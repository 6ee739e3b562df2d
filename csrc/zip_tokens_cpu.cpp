// C++ CPU kernel of visionzip::zip_tokens (docs/CONTRACT.md), registered as _zip_tokens_cpu.
//
// Two phases, each parallel with at::parallel_for:
//   1. plan, per image: head-reduced scores, top-k_dom (ties to the lower index, non-finite last),
//      ascending dominant indices, the remaining list, the target/merge split, unit keys and the
//      argmax assignment (ties to the lower target). Every quantity that decides an index is
//      evaluated in the contract's fixed float32 order; the loops below run the sequential
//      dimension outermost so that the compiler vectorises across independent tokens instead.
//      Built with -ffp-contract=off, so no product is fused into a sum.
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
#include "zip_tokens_checks.h"

namespace visionzip {
namespace {

using at::Tensor;

constexpr int64_t kChannelBlock = 256;  // 1 KiB of float32 per accumulator row: T rows stay in L1/L2

// Token scores [N]: the per-head row summed over heads in head order (and, for a full map without
// a CLS token, each head's column summed over queries in query order first).
template <typename attn_t>
void token_scores(const Tensor& attn, int64_t b, bool has_cls, float* scores, float* column) {
  const int64_t n_tokens = attn.size(-1);
  const attn_t* base = attn.data_ptr<attn_t>();
  const auto st = attn.strides();
  std::fill(scores, scores + n_tokens, 0.f);
  if (attn.dim() == 2) {
    for (int64_t j = 0; j < n_tokens; ++j) scores[j] = static_cast<float>(base[b * st[0] + j * st[1]]);
    return;
  }
  const int64_t heads = attn.size(1);
  for (int64_t h = 0; h < heads; ++h) {
    const attn_t* head = base + b * st[0] + h * st[1];
    if (attn.dim() == 3) {
      for (int64_t j = 0; j < n_tokens; ++j) scores[j] += static_cast<float>(head[j * st[2]]);
    } else if (has_cls) {
      for (int64_t j = 0; j < n_tokens; ++j) scores[j] += static_cast<float>(head[j * st[3]]);
    } else {
      std::fill(column, column + n_tokens, 0.f);
      for (int64_t i = 0; i < n_tokens; ++i) {
        const attn_t* row = head + i * st[2];
        for (int64_t j = 0; j < n_tokens; ++j) column[j] += static_cast<float>(row[j * st[3]]);
      }
      for (int64_t j = 0; j < n_tokens; ++j) scores[j] += column[j];
    }
  }
}

// Transposed metric of the remaining tokens, metric_t[d * M + m] (float32): the head average of
// per-head keys (summed over heads in head order, then divided by H), the given keys, or the
// hidden states themselves. Rows are accumulated contiguously in `rows` [M, Dk], then transposed.
template <typename key_t>
void gather_metric(const Tensor& metric, int64_t b, const std::vector<int64_t>& remaining, float* rows,
                   float* metric_t) {
  const int64_t n_rem = static_cast<int64_t>(remaining.size());
  const key_t* base = metric.data_ptr<key_t>();
  const auto st = metric.strides();
  const bool per_head = metric.dim() == 4;
  const int64_t heads = per_head ? metric.size(1) : 1;
  const int64_t width = metric.size(-1);
  const int64_t token_stride = st[metric.dim() - 2];
  const int64_t chan_stride = st[metric.dim() - 1];
  for (int64_t m = 0; m < n_rem; ++m) {
    float* row = rows + m * width;
    std::fill(row, row + width, 0.f);
    for (int64_t h = 0; h < heads; ++h) {
      const key_t* src = base + b * st[0] + (per_head ? h * st[1] : 0) + remaining[m] * token_stride;
      if constexpr (std::is_same_v<key_t, c10::Half>) {
        if (chan_stride == 1) {
          add_half_row(src, row, width);
          continue;
        }
      }
      for (int64_t d = 0; d < width; ++d) row[d] += static_cast<float>(src[d * chan_stride]);
    }
    if (per_head) {
      for (int64_t d = 0; d < width; ++d) row[d] /= static_cast<float>(heads);
    }
  }
  for (int64_t m = 0; m < n_rem; ++m) {
    for (int64_t d = 0; d < width; ++d) metric_t[d * n_rem + m] = rows[m * width + d];
  }
}

// Normalises every column of metric_t [Dk, M] in place: sum of squares in channel order, then a
// correctly rounded sqrt and division; a column whose norm is not > 0 becomes 0.
void normalise_columns(float* metric_t, int64_t width, int64_t n_rem, float* norm) {
  std::fill(norm, norm + n_rem, 0.f);
  for (int64_t d = 0; d < width; ++d) {
    const float* col = metric_t + d * n_rem;
    for (int64_t m = 0; m < n_rem; ++m) norm[m] += col[m] * col[m];
  }
  for (int64_t m = 0; m < n_rem; ++m) norm[m] = std::sqrt(norm[m]);
  for (int64_t d = 0; d < width; ++d) {
    float* col = metric_t + d * n_rem;
    for (int64_t m = 0; m < n_rem; ++m) col[m] = norm[m] > 0.f ? col[m] / norm[m] : 0.f;
  }
}

// Everything phase 2 needs to know about one image.
struct ImagePlan {
  std::vector<int64_t> target_idx;   // [k_ctx] token indices
  std::vector<int64_t> merge_idx;    // [M - k_ctx] token indices, ascending
  std::vector<int32_t> merge_assign; // [M - k_ctx] target slot of each merge token
  std::vector<float> inv_count;      // [k_ctx] 1 / members (0 where none)
};

template <typename attn_t, typename key_t>
void plan_image(const Tensor& attn, const Tensor& metric, int64_t b, int64_t k_dom, int64_t k_ctx,
                bool has_cls, int64_t* dominant_out, ImagePlan& plan) {
  const int64_t n_tokens = attn.size(-1);
  std::vector<float> scores(n_tokens), column(n_tokens);
  token_scores<attn_t>(attn, b, has_cls, scores.data(), column.data());
  for (auto& s : scores) s = std::isfinite(s) ? s : -std::numeric_limits<float>::infinity();

  // Top-k over the patch tokens: higher score first, equal scores to the lower index.
  const int64_t first = has_cls ? 1 : 0;
  const int64_t n_pick = k_dom - first;
  std::vector<int64_t> candidates(n_tokens - first);
  std::iota(candidates.begin(), candidates.end(), first);
  auto better = [&](int64_t a, int64_t c) { return scores[a] > scores[c] || (scores[a] == scores[c] && a < c); };
  if (n_pick > 0 && n_pick < static_cast<int64_t>(candidates.size())) {
    std::nth_element(candidates.begin(), candidates.begin() + (n_pick - 1), candidates.end(), better);
  }
  std::vector<uint8_t> is_dominant(n_tokens, 0);
  if (has_cls) is_dominant[0] = 1;
  for (int64_t i = 0; i < n_pick; ++i) is_dominant[candidates[i]] = 1;

  std::vector<int64_t> remaining;
  remaining.reserve(n_tokens - k_dom);
  for (int64_t j = 0, out = 0; j < n_tokens; ++j) {
    if (is_dominant[j]) dominant_out[out++] = j;
    else remaining.push_back(j);
  }
  if (k_ctx == 0) return;

  // Targets every `step` positions of the remaining list; the rest are merge tokens.
  const int64_t n_rem = static_cast<int64_t>(remaining.size());
  const int64_t step = std::max<int64_t>(1, n_rem / k_ctx);
  std::vector<uint8_t> is_target(n_rem, 0);
  std::vector<int64_t> target_pos(k_ctx);
  for (int64_t t = 0; t < k_ctx; ++t) {
    target_pos[t] = t * step;
    is_target[t * step] = 1;
    plan.target_idx[t] = remaining[t * step];
  }
  const int64_t width = metric.size(-1);
  std::vector<float> rows(width * n_rem), unit_t(width * n_rem), norm(n_rem);
  gather_metric<key_t>(metric, b, remaining, rows.data(), unit_t.data());
  normalise_columns(unit_t.data(), width, n_rem, norm.data());

  // sim[t][m] over every remaining position m, dot products in channel order; best target per m.
  std::vector<float> sim(n_rem), best(n_rem, -std::numeric_limits<float>::infinity());
  std::vector<int32_t> best_target(n_rem, 0);
  for (int64_t t = 0; t < k_ctx; ++t) {
    std::fill(sim.begin(), sim.end(), 0.f);
    for (int64_t d = 0; d < width; ++d) {
      const float* col = unit_t.data() + d * n_rem;
      const float target_d = col[target_pos[t]];
      for (int64_t m = 0; m < n_rem; ++m) sim[m] += col[m] * target_d;
    }
    for (int64_t m = 0; m < n_rem; ++m) {
      if (sim[m] > best[m]) {  // strict: an equal later target never wins; NaN never wins
        best[m] = sim[m];
        best_target[m] = static_cast<int32_t>(t);
      }
    }
  }
  std::vector<int64_t> members(k_ctx, 0);
  plan.merge_idx.clear();
  plan.merge_assign.clear();
  for (int64_t m = 0; m < n_rem; ++m) {
    if (is_target[m]) continue;
    plan.merge_idx.push_back(remaining[m]);
    plan.merge_assign.push_back(best_target[m]);
    ++members[best_target[m]];
  }
  for (int64_t t = 0; t < k_ctx; ++t) plan.inv_count[t] = members[t] ? 1.f / static_cast<float>(members[t]) : 0.f;
}

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
