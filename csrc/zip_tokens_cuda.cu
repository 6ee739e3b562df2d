// CUDA C++ kernels of visionzip::zip_tokens (docs/CONTRACT.md), registered as _zip_tokens_cuda,
// and the module `visionzip_kernels._C_cuda` that loads them.
//
// Three launches on the current stream, no host synchronisation, no allocation beyond the outputs
// and an int32 plan workspace [B, 2 N - k_dom] (layout at plan_slots in zip_tokens_cuda.cuh; why
// three, at the top of that file):
//   1. zip_select_kernel: grid B, 1024 threads: dominant_idx, the remaining tokens;
//   2. zip_assign_kernel (k_ctx > 0): grid B x position blocks, 256 threads: each merge token's target;
//   3. zip_apply_kernel (D > 0): grid B x channel blocks: tokens.
// Launch shapes come from zip_tokens_launch.h. The entry point checks its arguments first
// (zip_tokens_checks.h) and N <= 4096. Every input is read through its strides, never copied; the
// apply kernel uses 16-byte vectors where hidden's channels are contiguous and aligned, scalars
// otherwise.
#include <Python.h>  // first, as Python requires

#include "cuda_dispatch.h"
#include "zip_tokens_checks.h"
#include "zip_tokens_launch.h"

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <mutex>
#include <optional>
#include <tuple>
#include <vector>

namespace visionzip::cuda {
namespace {

using at::Tensor;


template <typename T>
AttnInput<typename DeviceScalar<T>::type> attn_input(const Tensor& attn, bool has_cls) {
  return attn_view(device_data<T>(attn), static_cast<int>(attn.dim()), attn.sizes().data(), attn.strides().data(),
                   has_cls);
}

template <typename T>
MetricInput<typename DeviceScalar<T>::type> metric_input(const Tensor& metric) {
  return metric_view(device_data<T>(metric), static_cast<int>(metric.dim()), metric.sizes().data(),
                     metric.strides().data());
}

// The device's SM count and its shared memory opt-in, for the launch shapes: queried once per
// device, so a call makes no driver query.
DeviceLimits device_limits(int device) {
  static const int devices = c10::cuda::device_count();
  static std::vector<DeviceLimits> limits(devices);
  static std::vector<std::once_flag> queried(devices);
  std::call_once(queried[device], [device] {
    int sm_count = 0, opt_in = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&opt_in, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    limits[device] = {sm_count, static_cast<size_t>(opt_in)};
  });
  return limits[device];
}

// Allows `bytes` of dynamic shared memory for `kernel` where that is beyond the default 48 KiB.
template <typename Kernel>
void allow_shared(Kernel* kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  }
}

template <typename attn_t>
void launch_select(const Tensor& attn, const SelectShape& shape, Tensor& dominant_idx, Tensor& plan,
                   cudaStream_t stream) {
  const size_t smem = SelectLayout(shape.n_tokens).bytes;
  auto* kernel = &zip_select_kernel<typename DeviceScalar<attn_t>::type>;
  allow_shared(kernel, smem);
  kernel<<<static_cast<unsigned>(attn.size(0)), kSelectThreads, smem, stream>>>(
      attn_input<attn_t>(attn, shape.has_cls), shape, dominant_idx.mutable_data_ptr<int64_t>(),
      plan.mutable_data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename key_t>
void launch_assign(const Tensor& metric, int k_dom, int k_ctx, const DeviceLimits& device, Tensor& plan,
                   cudaStream_t stream) {
  const int64_t batch = metric.size(0);
  const int n_tokens = static_cast<int>(metric.size(-2)), width = static_cast<int>(metric.size(-1));
  size_t smem = 0;
  const AssignShape shape = assign_shape(batch, n_tokens, k_dom, k_ctx, width, device, LaunchOverrides{}, smem);
  TORCH_CHECK(shape.tile_channels >= 1, "zip_tokens: backend='cuda' needs more shared memory per block than the ",
              device.shared_opt_in, " bytes the device allows");
  const int64_t blocks = batch * shape.position_blocks;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "zip_tokens: batch too large for one launch");
  auto* kernel = &zip_assign_kernel<typename DeviceScalar<key_t>::type>;
  allow_shared(kernel, smem);
  kernel<<<static_cast<unsigned>(blocks), kAssignThreads, smem, stream>>>(metric_input<key_t>(metric), shape,
                                                                          plan.mutable_data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int VEC>
void launch_apply_as(const Tensor& hidden, const ApplyShape& shape, size_t smem, const Tensor& plan, Tensor& tokens,
                     cudaStream_t stream) {
  using Device = typename DeviceScalar<T>::type;
  const int64_t blocks = hidden.size(0) * shape.channel_blocks;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "zip_tokens: batch too large for one launch");
  auto* kernel = &zip_apply_kernel<Device, VEC>;
  allow_shared(kernel, smem);
  const HiddenInput view{hidden.stride(0), hidden.stride(1), hidden.stride(2)};
  kernel<<<static_cast<unsigned>(blocks), shape.channel_lanes * shape.row_lanes, smem, stream>>>(
      device_data<T>(hidden), view, shape, plan.const_data_ptr<int32_t>(),
      reinterpret_cast<Device*>(tokens.mutable_data_ptr<T>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_apply(const Tensor& hidden, int k_dom, int k_ctx, const DeviceLimits& device, const Tensor& plan,
                  Tensor& tokens, cudaStream_t stream) {
  const ApplyLaunch launch = apply_launch(hidden.const_data_ptr(), hidden.sizes().data(), hidden.strides().data(),
                                          static_cast<int>(sizeof(T)), k_dom, k_ctx, device, LaunchOverrides{});
  TORCH_CHECK(launch.shape.channel_lanes > 0, "zip_tokens: backend='cuda' needs more shared memory per block than the ",
              device.shared_opt_in, " bytes the device allows");
  if (launch.vec > 1) {
    launch_apply_as<T, 16 / sizeof(T)>(hidden, launch.shape, launch.shared_bytes, plan, tokens, stream);
  } else {
    launch_apply_as<T, 1>(hidden, launch.shape, launch.shared_bytes, plan, tokens, stream);
  }
}

std::tuple<Tensor, Tensor> zip_tokens_cuda(const Tensor& hidden, const Tensor& attn, int64_t k_dom, int64_t k_ctx,
                                           const std::optional<Tensor>& keys, bool has_cls) {
  check_zip_tokens_args(hidden, attn, k_dom, k_ctx, keys, has_cls);
  const c10::cuda::CUDAGuard device_guard(hidden.device());
  const int64_t batch = hidden.size(0), n_tokens = hidden.size(1), width = hidden.size(2);
  TORCH_CHECK(n_tokens <= kMaxTokens, "zip_tokens: backend='cuda' supports at most ", kMaxTokens,
              " tokens, got N=", n_tokens);
  Tensor tokens = at::empty({batch, k_dom + k_ctx, width}, hidden.options());
  Tensor dominant_idx = at::empty({batch, k_dom}, hidden.options().dtype(at::kLong));
  if (batch == 0) return {tokens, dominant_idx};
  const int n = static_cast<int>(n_tokens), dom = static_cast<int>(k_dom), ctx = static_cast<int>(k_ctx);
  Tensor plan = at::empty({batch, plan_slots(n, dom)}, hidden.options().dtype(at::kInt));
  const Tensor& metric = keys.has_value() ? *keys : hidden;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const DeviceLimits device = device_limits(hidden.get_device());

  const SelectShape select{n, dom, has_cls, plan.stride(0)};
  VISIONZIP_DISPATCH_FLOAT(attn.scalar_type(), "zip_tokens_cuda_select",
                           [&] { launch_select<scalar_t>(attn, select, dominant_idx, plan, stream); });
  if (ctx > 0) {
    VISIONZIP_DISPATCH_FLOAT(metric.scalar_type(), "zip_tokens_cuda_assign",
                             [&] { launch_assign<scalar_t>(metric, dom, ctx, device, plan, stream); });
  }
  if (width > 0) {
    VISIONZIP_DISPATCH_FLOAT(hidden.scalar_type(), "zip_tokens_cuda_apply",
                             [&] { launch_apply<scalar_t>(hidden, dom, ctx, device, plan, tokens, stream); });
  }
  return {tokens, dominant_idx};
}

}  // namespace

TORCH_LIBRARY_IMPL(visionzip, CUDA, m) {
  m.impl("_zip_tokens_cuda", &zip_tokens_cuda);
}

}  // namespace visionzip::cuda

// An importable module, so that `import visionzip_kernels._C_cuda` loads the registration above.
extern "C" PyObject* PyInit__C_cuda(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
