// CUDA C++ kernels of visionzip::attention_importance (visionzip_kernels/ops/attention_importance/
// reference.py is the definition), registered as _attention_importance_cuda.
//
// At most two launches on the current stream, no host synchronisation, no allocation beyond the
// output [B, H, N] float32 and, without a CLS token and without `lse`, the lse workspace [B, H, N]:
// - with a CLS token: cls_row_kernel, one block per (batch, head);
// - without: the row pass (lse of every query; skipped when `lse` is given), then the column pass,
//   on tensor cores (mma_pass_kernel) for float16/bfloat16 with hd <= 128, on the CUDA cores
//   (simt_pass_kernel) otherwise.
// q and k are read through their strides (any layout, e.g. the encoder's token-major views of
// [B, N, H * hd] projections), 16 bytes at a time where the layout allows it.
// The entry point checks its arguments with the messages of op.py's check_attention_importance_args,
// as ValueError/TypeError, since torch.ops.visionzip._attention_importance_cuda is public too.
#include "attention_importance_cuda.cuh"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <sstream>
#include <string>

namespace visionzip::cuda::importance {
namespace {

using at::Tensor;

constexpr int kDefaultSharedBytes = 48 * 1024;  // beyond this a kernel must opt in

// Sizes as Python prints a tuple: (2, 3, 9) or (5,).
std::string tuple_text(at::IntArrayRef sizes) {
  std::ostringstream text;
  text << "(";
  for (size_t i = 0; i < sizes.size(); ++i) text << (i ? ", " : "") << sizes[i];
  text << (sizes.size() == 1 ? ",)" : ")");
  return text.str();
}

std::string dtype_text(at::ScalarType dtype) { return "torch." + std::string(c10::getDtypeNames(dtype).first); }

std::string float_text(double value) {
  if (std::isnan(value)) return "nan";
  std::ostringstream text;
  text << value;
  return text.str();
}

void check_qk(const Tensor& t, const char* name) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
                    "attention_importance: `", name, "` must be float32, float16 or bfloat16, got ", dtype_text(dtype));
  TORCH_CHECK_VALUE(t.dim() == 4, "attention_importance: `", name, "` must be [B, H, N, hd], got shape ",
                    tuple_text(t.sizes()));
  const char* dim_names[4] = {"B", "H", "N", "hd"};
  for (int dim = 0; dim < 4; ++dim) {
    TORCH_CHECK_VALUE(t.size(dim) >= 1, "attention_importance: `", name, "` must have ", dim_names[dim],
                      " >= 1, got shape ", tuple_text(t.sizes()));
  }
}

// What op.py's check_attention_importance_args checks, in its order and words, then the sizes this
// backend's grids take.
void check_args(const Tensor& q, const Tensor& k, double scale, const std::optional<Tensor>& lse) {
  check_qk(q, "q");
  check_qk(k, "k");
  TORCH_CHECK_VALUE(k.sizes() == q.sizes(), "attention_importance: `k` must have the shape of `q` ",
                    tuple_text(q.sizes()), ", got ", tuple_text(k.sizes()));
  TORCH_CHECK_VALUE(k.scalar_type() == q.scalar_type(), "attention_importance: `k` must have the dtype of `q` (",
                    dtype_text(q.scalar_type()), "), got ", dtype_text(k.scalar_type()));
  TORCH_CHECK_VALUE(std::isfinite(scale), "attention_importance: `scale` must be finite, got ", float_text(scale));
  if (lse.has_value()) {
    TORCH_CHECK_VALUE(lse->sizes() == q.sizes().slice(0, 3), "attention_importance: `lse` must be [B, H, N] = ",
                      tuple_text(q.sizes().slice(0, 3)), " like `q`, got shape ", tuple_text(lse->sizes()));
    TORCH_CHECK_VALUE(lse->scalar_type() == at::kFloat, "attention_importance: `lse` must be float32, got ",
                      dtype_text(lse->scalar_type()));
  }
  const auto check_device = [&](const Tensor& t, const char* name) {
    TORCH_CHECK_VALUE(t.device() == q.device(), "attention_importance: `", name, "` is on ", t.device().str(),
                      " but `q` is on ", q.device().str(), "; all tensors must be on one device");
  };
  check_device(k, "k");
  if (lse.has_value()) check_device(*lse, "lse");
  TORCH_CHECK_VALUE(q.is_cuda(), "attention_importance: backend='cuda' runs on cuda tensors only, not ",
                    q.device().str());

  constexpr int64_t kMaxInt = std::numeric_limits<int32_t>::max();
  TORCH_CHECK_VALUE(q.size(0) * q.size(1) <= kMaxInt, "attention_importance: backend='cuda' supports at most ",
                    kMaxInt, " (batch, head) pairs, got B * H = ", q.size(0) * q.size(1));
  TORCH_CHECK_VALUE((q.size(2) + kTileRows - 1) / kTileRows <= 65535 && q.size(3) <= kMaxInt,
                    "attention_importance: backend='cuda' supports N <= ", 65535 * kTileRows, " and hd <= ", kMaxInt,
                    ", got shape ", tuple_text(q.sizes()));
}

bool rows_in_16_bytes(const Tensor& t) {
  const int64_t sizes[4] = {t.size(0), t.size(1), t.size(2), t.size(3)};
  const int64_t strides[4] = {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
  return importance::rows_in_16_bytes(reinterpret_cast<uintptr_t>(t.const_data_ptr()), sizes, strides,
                                      static_cast<int>(t.element_size()));
}

template <typename T>
HeadsView<T> heads_view(const Tensor& t) {
  return {reinterpret_cast<const T*>(t.const_data_ptr()), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

template <typename F>
LseView<F> lse_view(F* data, const Tensor& lse) {
  return {data, lse.stride(0), lse.stride(1), lse.stride(2)};
}

// Raises the kernel's dynamic shared-memory limit where it needs more than the default.
template <typename Kernel>
void allow_shared_bytes(Kernel* kernel, int bytes) {
  if (bytes > kDefaultSharedBytes) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  }
}

template <typename T, bool kVec>
void launch_mma_passes(const HeadsView<T>& q, const HeadsView<T>& k, LseView<const float> lse_in,
                       std::optional<LseView<float>> lse_out, const ImportanceShape& shape, const LaunchPlan& plan,
                       dim3 grid, float* out, cudaStream_t stream) {
  if (lse_out.has_value()) {
    auto* row_pass = &mma_pass_kernel<T, false, kVec>;
    allow_shared_bytes(row_pass, plan.shared_bytes);
    row_pass<<<grid, kMmaThreads, plan.shared_bytes, stream>>>(q, k, lse_in, *lse_out, shape, plan.dim_padded, out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  auto* column_pass = &mma_pass_kernel<T, true, kVec>;
  allow_shared_bytes(column_pass, plan.shared_bytes);
  column_pass<<<grid, kMmaThreads, plan.shared_bytes, stream>>>(q, k, lse_in, LseView<float>{}, shape,
                                                                plan.dim_padded, out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch(const Tensor& q, const Tensor& k, bool has_cls, double scale, const std::optional<Tensor>& lse,
            Tensor& out, cudaStream_t stream) {
  const int64_t batch_heads = q.size(0) * q.size(1);
  const ImportanceShape shape{static_cast<int>(q.size(1)), static_cast<int>(q.size(2)),
                              has_cls ? 1 : static_cast<int>(q.size(2)), static_cast<int>(q.size(3)),
                              static_cast<float>(scale * 1.4426950408889634)};
  const LaunchPlan plan = plan_launch(has_cls, sizeof(T) == 2, shape.head_dim, shape.n_tokens,
                                      rows_in_16_bytes(q) && rows_in_16_bytes(k));
  const HeadsView<T> q_view = heads_view<T>(q), k_view = heads_view<T>(k);
  float* out_data = out.mutable_data_ptr<float>();

  if (plan.path == KernelPath::kClsRow) {
    const LseView<const float> lse_in = lse.has_value() ? lse_view(lse->const_data_ptr<float>(), *lse)
                                                        : LseView<const float>{nullptr, 0, 0, 0};
    const auto grid = static_cast<unsigned>(batch_heads);
    if (plan.vectorised) {
      cls_row_kernel<T, 16 / sizeof(T)><<<grid, kClsThreads, 0, stream>>>(q_view, k_view, lse_in, shape, out_data);
    } else {
      cls_row_kernel<T, 1><<<grid, kClsThreads, 0, stream>>>(q_view, k_view, lse_in, shape, out_data);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }

  // Without `lse`, the row pass fills a workspace that the column pass reads.
  Tensor workspace;
  std::optional<LseView<float>> lse_out;
  LseView<const float> lse_in{};
  if (lse.has_value()) {
    lse_in = lse_view(lse->const_data_ptr<float>(), *lse);
  } else {
    workspace = at::empty({q.size(0), q.size(1), q.size(2)}, out.options());
    lse_out = lse_view(workspace.mutable_data_ptr<float>(), workspace);
    lse_in = lse_view(workspace.const_data_ptr<float>(), workspace);
  }
  const dim3 grid(static_cast<unsigned>(batch_heads), static_cast<unsigned>(plan.row_blocks));
  if (plan.path == KernelPath::kMma) {
    if constexpr (sizeof(T) == 2) {
      if (plan.vectorised) {
        launch_mma_passes<T, true>(q_view, k_view, lse_in, lse_out, shape, plan, grid, out_data, stream);
      } else {
        launch_mma_passes<T, false>(q_view, k_view, lse_in, lse_out, shape, plan, grid, out_data, stream);
      }
    }
    return;
  }
  if (lse_out.has_value()) {
    simt_pass_kernel<T, false><<<grid, kSimtThreads, 0, stream>>>(q_view, k_view, lse_in, *lse_out, shape, out_data);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  simt_pass_kernel<T, true><<<grid, kSimtThreads, 0, stream>>>(q_view, k_view, lse_in, LseView<float>{}, shape,
                                                                out_data);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

Tensor attention_importance_cuda(const Tensor& q, const Tensor& k, bool has_cls, double scale,
                                 const std::optional<Tensor>& lse) {
  check_args(q, k, scale, lse);
  const c10::cuda::CUDAGuard device_guard(q.device());
  Tensor out = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  switch (q.scalar_type()) {
    case at::kFloat:
      launch<float>(q, k, has_cls, scale, lse, out, stream);
      break;
    case at::kHalf:
      launch<__half>(q, k, has_cls, scale, lse, out, stream);
      break;
    default:  // bfloat16: check_args admits no other dtype
      launch<__nv_bfloat16>(q, k, has_cls, scale, lse, out, stream);
      break;
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(visionzip, CUDA, m) {
  m.impl("_attention_importance_cuda", &attention_importance_cuda);
}

}  // namespace visionzip::cuda::importance
