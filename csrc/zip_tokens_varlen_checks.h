// The argument checks of visionzip::zip_tokens_varlen's C++ entry points (_zip_tokens_varlen_cpu,
// _zip_tokens_varlen_cuda): everything their kernels rely on, so that no input reaches a kernel that
// could make it read or write out of bounds. The Python function validates first, with messages
// naming each argument (visionzip_kernels/ops/zip_tokens_varlen/op.py); these guard torch.ops.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <optional>

namespace visionzip {

// hidden [T_total, D >= 1], importance [T_total], keys [T_total, Dk >= 1], cu_seqlens [n + 1] int32 or
// int64, seqlens, k_dom and k_ctx n counts with 0 <= k_dom + k_ctx <= seqlens, seqlens summing to
// T_total; the tensors on one device of type `device`, cu_seqlens there or on the CPU. A cu_seqlens on
// the CPU is read and must hold the offsets of seqlens; one on a GPU is not read here.
inline void check_zip_tokens_varlen_args(const at::Tensor& hidden, const at::Tensor& importance,
                                         const at::Tensor& cu_seqlens, c10::IntArrayRef seqlens,
                                         c10::IntArrayRef k_dom, c10::IntArrayRef k_ctx,
                                         const std::optional<at::Tensor>& keys, c10::DeviceType device,
                                         const char* backend) {
  TORCH_CHECK(hidden.dim() == 2 && hidden.size(1) >= 1, "zip_tokens_varlen: hidden must be [T_total, D]");
  TORCH_CHECK(importance.dim() == 1 && importance.size(0) == hidden.size(0),
              "zip_tokens_varlen: importance must be [T_total]");
  TORCH_CHECK(!keys.has_value() || (keys->dim() == 2 && keys->size(0) == hidden.size(0) && keys->size(1) >= 1),
              "zip_tokens_varlen: keys must be [T_total, Dk]");
  TORCH_CHECK(hidden.device().type() == device && importance.device() == hidden.device() &&
                  (!keys.has_value() || keys->device() == hidden.device()) &&
                  (cu_seqlens.is_cpu() || cu_seqlens.device() == hidden.device()),
              "zip_tokens_varlen: the ", backend, " backend takes its tensors on one ", c10::DeviceTypeName(device),
              " device (cu_seqlens may be on the CPU)");
  const int64_t n = static_cast<int64_t>(seqlens.size());
  TORCH_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.size(0) == n + 1 &&
                  (cu_seqlens.scalar_type() == at::kInt || cu_seqlens.scalar_type() == at::kLong),
              "zip_tokens_varlen: cu_seqlens must be [n + 1] int32 or int64");
  TORCH_CHECK(static_cast<int64_t>(k_dom.size()) == n && static_cast<int64_t>(k_ctx.size()) == n,
              "zip_tokens_varlen: k_dom and k_ctx must hold one count per segment");
  int64_t total = 0;
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(seqlens[i] >= 0 && seqlens[i] <= std::numeric_limits<int32_t>::max() / 2,
                "zip_tokens_varlen: seqlens must be between 0 and 2^30 tokens per segment");
    TORCH_CHECK(k_dom[i] >= 0 && k_ctx[i] >= 0 && k_dom[i] + k_ctx[i] <= seqlens[i],
                "zip_tokens_varlen: every segment must keep between 0 and its size tokens");
    total += seqlens[i];
  }
  TORCH_CHECK(total == hidden.size(0), "zip_tokens_varlen: seqlens must sum to T_total");
  if (cu_seqlens.is_cpu()) {
    const at::Tensor offsets = cu_seqlens.to(at::kLong).contiguous();
    const int64_t* cu = offsets.const_data_ptr<int64_t>();
    TORCH_CHECK(cu[0] == 0, "zip_tokens_varlen: cu_seqlens must run from 0 to T_total");
    for (int64_t i = 0; i < n; ++i) {
      TORCH_CHECK(cu[i + 1] - cu[i] == seqlens[i], "zip_tokens_varlen: cu_seqlens must hold the offsets of seqlens");
    }
  }
}

}  // namespace visionzip
