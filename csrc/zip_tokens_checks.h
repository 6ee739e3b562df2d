// The argument checks of visionzip::zip_tokens, shared by its C++ entry points (_zip_tokens_cpu,
// _zip_tokens_cuda): everything the kernels rely on, with the messages and exception types of the
// Python validation (check_zip_tokens_args in visionzip_kernels/ops/zip_tokens/op.py), in the same
// order, so that any input the contract rejects raises the same ValueError through torch.ops as
// through visionzip_kernels.zip_tokens, and never reaches a kernel.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>
#include <string>

namespace visionzip {

// A dtype as Python prints it ("torch.float64").
inline std::string python_dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kByte: return "torch.uint8";
    case at::kChar: return "torch.int8";
    case at::kShort: return "torch.int16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kHalf: return "torch.float16";
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kComplexHalf: return "torch.complex32";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    case at::kBool: return "torch.bool";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kUInt16: return "torch.uint16";
    case at::kUInt32: return "torch.uint32";
    case at::kUInt64: return "torch.uint64";
    case at::kFloat8_e5m2: return "torch.float8_e5m2";
    case at::kFloat8_e4m3fn: return "torch.float8_e4m3fn";
    case at::kFloat8_e5m2fnuz: return "torch.float8_e5m2fnuz";
    case at::kFloat8_e4m3fnuz: return "torch.float8_e4m3fnuz";
    default: return std::string("torch.") + c10::toString(dtype);
  }
}

// A shape as Python prints tuple(tensor.shape): "(2, 5, 7)", "(5,)", "()".
inline std::string python_shape(const at::Tensor& tensor) {
  std::string text = "(";
  for (int64_t d = 0; d < tensor.dim(); ++d) {
    if (d > 0) text += ", ";
    text += std::to_string(tensor.size(d));
  }
  return text + (tensor.dim() == 1 ? ",)" : ")");
}

// float32/float16/bfloat16, and one of the ranks `rank_a`/`rank_b`/`rank_c` (-1: none), whose
// layouts in words are `layouts` ("[B, N, D]" or "[B, H, N, N] or [B, H, N] or [B, N]").
inline void check_float_tensor(const at::Tensor& tensor, const char* name, const char* layouts, int64_t rank_a,
                               int64_t rank_b = -1, int64_t rank_c = -1) {
  const auto dtype = tensor.scalar_type();
  TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, "zip_tokens: `", name,
                    "` must be float32, float16 or bfloat16, got ", python_dtype_name(dtype));
  const int64_t rank = tensor.dim();
  TORCH_CHECK_VALUE(rank == rank_a || rank == rank_b || rank == rank_c, "zip_tokens: `", name, "` must be ", layouts,
                    ", got shape ", python_shape(tensor));
}

inline void check_nonempty_dim(const at::Tensor& tensor, const char* name, int64_t dim, const char* dim_name) {
  TORCH_CHECK_VALUE(tensor.size(dim) >= 1, "zip_tokens: `", name, "` must have ", dim_name,
                    " >= 1, got shape ", python_shape(tensor));
}

inline void check_same_device(const at::Tensor& tensor, const char* name, const at::Tensor& hidden) {
  TORCH_CHECK_VALUE(tensor.device() == hidden.device(), "zip_tokens: `", name, "` is on ", tensor.device().str(),
                    " but `hidden` is on ", hidden.device().str(), "; all tensors must be on one device");
}

// Ranks, dtypes, matching B and N, non-empty D, H and Dk, one device, and budgets
// 1 <= k_dom, 0 <= k_ctx, k_dom + k_ctx <= N. Called first by every C++ entry point.
inline void check_zip_tokens_args(const at::Tensor& hidden, const at::Tensor& attn, int64_t k_dom, int64_t k_ctx,
                                  const std::optional<at::Tensor>& keys, bool has_cls) {
  check_float_tensor(hidden, "hidden", "[B, N, D]", 3);
  check_float_tensor(attn, "attn", "[B, H, N, N] or [B, H, N] or [B, N]", 4, 3, 2);
  if (keys.has_value()) check_float_tensor(*keys, "keys", "[B, N, Dk] or [B, H, N, hd]", 3, 4);

  const int64_t batch = hidden.size(0), n_tokens = hidden.size(1);
  TORCH_CHECK_VALUE(attn.size(0) == batch && attn.size(-1) == n_tokens, "zip_tokens: `attn` must have B=", batch,
                    " and N=", n_tokens, " like `hidden` ", python_shape(hidden), ", got shape ", python_shape(attn));
  TORCH_CHECK_VALUE(attn.dim() != 4 || attn.size(2) == n_tokens,
                    "zip_tokens: a full `attn` map must be [B, H, N, N] with N=", n_tokens, ", got shape ",
                    python_shape(attn));
  if (keys.has_value()) {
    TORCH_CHECK_VALUE(keys->size(0) == batch && keys->size(-2) == n_tokens, "zip_tokens: `keys` must have B=", batch,
                      " and N=", n_tokens, " like `hidden` ", python_shape(hidden), ", got shape ",
                      python_shape(*keys));
  }
  check_nonempty_dim(hidden, "hidden", 2, "D");
  if (attn.dim() > 2) check_nonempty_dim(attn, "attn", 1, "H");
  if (keys.has_value()) {
    check_nonempty_dim(*keys, "keys", -1, "Dk");
    if (keys->dim() == 4) check_nonempty_dim(*keys, "keys", 1, "H");
  }
  check_same_device(attn, "attn", hidden);
  if (keys.has_value()) check_same_device(*keys, "keys", hidden);

  TORCH_CHECK_VALUE(k_dom >= 1, "zip_tokens: `k_dom` must be >= 1",
                    has_cls ? " (it counts the CLS token, so 1 keeps the CLS token alone)" : "", ", got ", k_dom);
  TORCH_CHECK_VALUE(k_ctx >= 0, "zip_tokens: `k_ctx` must be >= 0, got ", k_ctx);
  // Both are in [0, 2^63) here, so their sum fits in 64 unsigned bits.
  const uint64_t budget = static_cast<uint64_t>(k_dom) + static_cast<uint64_t>(k_ctx);
  TORCH_CHECK_VALUE(k_ctx <= n_tokens - k_dom, "zip_tokens: `k_dom` + `k_ctx` must be <= N=", n_tokens,
                    " tokens, got ", k_dom, " + ", k_ctx, " = ", budget);
}

}  // namespace visionzip
