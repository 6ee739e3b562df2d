// CUDA C++ backend of visionzip::zip_tokens_varlen (docs/CONTRACT.md, "the varlen ops"), registered
// as _zip_tokens_varlen_cuda: the kernels of zip_tokens_varlen_cuda.cuh, launched as
// zip_tokens_varlen_launch.h decides. The entry point checks its arguments first
// (zip_tokens_varlen_checks.h: a CPU cu_seqlens is compared with seqlens there; one on the GPU is
// compared by the kernels). Nothing is read back from the device and nothing is copied from the
// host: the per-segment sizes travel as kernel parameters and the kernels write cu_kept, so the call
// never synchronises and a CUDA graph can capture it. Inputs are read through their strides.
// Compile-checked (make cuda-check) and run on the CPU (tests/test_zip_tokens_varlen_cuda_emulated.py).
#include "cuda_dispatch.h"
#include "zip_tokens_varlen_checks.h"
#include "zip_tokens_varlen_launch.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>

namespace visionzip::cuda_varlen {
namespace {

using at::Tensor;
using visionzip::cuda::device_data;
using visionzip::cuda::DeviceScalar;

constexpr int64_t kMaxGridX = std::numeric_limits<int32_t>::max();
constexpr int64_t kMaxGridY = 65535;

std::tuple<Tensor, Tensor, Tensor> zip_tokens_varlen_cuda(const Tensor& hidden, const Tensor& importance,
                                                          const Tensor& cu_seqlens, c10::IntArrayRef seqlens,
                                                          c10::IntArrayRef k_dom, c10::IntArrayRef k_ctx,
                                                          const std::optional<Tensor>& keys) {
  check_zip_tokens_varlen_args(hidden, importance, cu_seqlens, seqlens, k_dom, k_ctx, keys, c10::DeviceType::CUDA,
                               "cuda");
  const c10::cuda::CUDAGuard device_guard(hidden.device());
  const int64_t n = static_cast<int64_t>(seqlens.size()), width = hidden.size(1);
  const VarlenLaunches plan = varlen_launches(seqlens.data(), k_dom.data(), k_ctx.data(), n, width);
  const auto long_options = hidden.options().dtype(at::kLong);
  Tensor tokens = at::empty({plan.kept_rows, width}, hidden.options());
  Tensor kept_idx = at::empty({plan.kept_rows}, long_options);
  if (n == 0) return {tokens, kept_idx, at::zeros({1}, long_options)};
  Tensor cu_kept = at::empty({n + 1}, long_options);
  TORCH_CHECK((width + kApplyThreads - 1) / kApplyThreads <= kMaxGridY, "zip_tokens_varlen: backend='cuda' takes at most ",
              kMaxGridY * kApplyThreads, " channels, got D=", width);
  for (const VarlenLaunch& launch : plan.launches) {
    TORCH_CHECK(launch.apply_blocks_x <= kMaxGridX, "zip_tokens_varlen: backend='cuda': k_ctx too large for one launch");
  }

  const Tensor& metric = keys.has_value() ? *keys : hidden;
  const int key_width = static_cast<int>(metric.size(1));
  const auto int_options = hidden.options().dtype(at::kInt);
  Tensor destination = at::empty({hidden.size(0)}, int_options);
  Tensor target_tok = at::empty({plan.target_slots}, int_options);
  Tensor target_row = at::empty({plan.target_slots}, int_options);
  Tensor unit = at::empty({plan.target_slots, key_width}, hidden.options().dtype(at::kFloat));
  const PlanWorkspace work{destination.mutable_data_ptr<int32_t>(), target_tok.mutable_data_ptr<int32_t>(),
                           target_row.mutable_data_ptr<int32_t>(), unit.mutable_data_ptr<float>()};
  const CuSeqlens cu = cu_seqlens.is_cuda()
                           ? CuSeqlens{cu_seqlens.const_data_ptr(), cu_seqlens.stride(0), cu_seqlens.scalar_type() == at::kLong}
                           : CuSeqlens{nullptr, 0, false};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  for (const VarlenLaunch& launch : plan.launches) {
    VISIONZIP_DISPATCH_FLOAT(importance.scalar_type(), "zip_tokens_varlen_cuda_plan", [&] {
      using imp_t = typename DeviceScalar<scalar_t>::type;
      const imp_t* scores = device_data<scalar_t>(importance);
      VISIONZIP_DISPATCH_FLOAT(metric.scalar_type(), "zip_tokens_varlen_cuda_plan", [&] {
        zip_varlen_plan_kernel<<<static_cast<unsigned>(launch.plan_blocks), kPlanThreads, 0, stream>>>(
            scores, importance.stride(0), device_data<scalar_t>(metric), metric.stride(0), metric.stride(1), key_width,
            launch.table, cu, work, kept_idx.mutable_data_ptr<int64_t>(), cu_kept.mutable_data_ptr<int64_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  for (const VarlenLaunch& launch : plan.launches) {
    VISIONZIP_DISPATCH_FLOAT(hidden.scalar_type(), "zip_tokens_varlen_cuda_apply", [&] {
      using T = typename DeviceScalar<scalar_t>::type;
      const dim3 grid(static_cast<unsigned>(launch.apply_blocks_x), static_cast<unsigned>(launch.apply_blocks_y));
      zip_varlen_apply_kernel<T><<<grid, kApplyThreads, 0, stream>>>(
          device_data<scalar_t>(hidden), hidden.stride(0), hidden.stride(1), static_cast<int>(width), launch.table,
          launch.target_blocks, cu, destination.const_data_ptr<int32_t>(), target_tok.const_data_ptr<int32_t>(),
          target_row.const_data_ptr<int32_t>(), reinterpret_cast<T*>(tokens.mutable_data_ptr<scalar_t>()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {tokens, kept_idx, cu_kept};
}

}  // namespace

TORCH_LIBRARY_IMPL(visionzip, CUDA, m) {
  m.impl("_zip_tokens_varlen_cuda", &zip_tokens_varlen_cuda);
}

}  // namespace visionzip::cuda_varlen
