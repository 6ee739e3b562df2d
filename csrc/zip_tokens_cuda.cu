// CUDA C++ kernels of visionzip::zip_tokens (docs/CONTRACT.md), registered as _zip_tokens_cuda,
// and the module `visionzip_kernels._C_cuda` that loads them.
//
// Two launches on the current stream, no host synchronisation, no allocation beyond the outputs
// and an int32 plan workspace [B, N + 2 k_ctx] (layout in zip_plan_kernel's comment):
//   1. zip_plan_kernel: grid B, 1024 threads, dynamic shared memory up to the device's opt-in
//      limit (metric tiles as wide as fit): dominant_idx and the plan;
//   2. zip_apply_kernel: grid B x channel blocks: tokens.
// The entry point checks its arguments first (zip_tokens_checks.h) and N <= 4096. Every input is read
// through its strides, never copied; the apply kernel uses 16-byte vectors where hidden's channels
// are contiguous and aligned, scalars otherwise.
#include <Python.h>  // first, as Python requires

#include "zip_tokens_checks.h"
#include "zip_tokens_cuda.cuh"

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>

namespace visionzip::cuda {
namespace {

using at::Tensor;

#define VISIONZIP_DISPATCH_FLOAT(TYPE, NAME, ...)                                   \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)          \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)       \
                                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Whether stepping along `dim` keeps a `multiple`-element vector aligned (always, for a dim of size 1).
bool stride_multiple(const Tensor& t, int64_t dim, int64_t multiple) {
  return t.size(dim) == 1 || t.stride(dim) % multiple == 0;
}

template <typename T>
AttnInput<T> attn_input(const Tensor& attn, bool has_cls) {
  AttnInput<T> view{attn.const_data_ptr<T>(), attn.stride(0), 0, 0, 0, 1, false};
  if (attn.dim() == 2) {
    view.stride_k = attn.stride(1);
    return view;
  }
  view.heads = static_cast<int>(attn.size(1));
  view.stride_h = attn.stride(1);
  if (attn.dim() == 3) {
    view.stride_k = attn.stride(2);
    return view;
  }
  view.stride_q = attn.stride(2);  // with a CLS token only query 0 is read: its row starts at offset 0
  view.stride_k = attn.stride(3);
  view.sum_queries = !has_cls;
  return view;
}

template <typename T>
MetricInput<T> metric_input(const Tensor& metric) {
  const bool per_head = metric.dim() == 4;
  const int64_t token_dim = metric.dim() - 2;
  MetricInput<T> view{metric.const_data_ptr<T>(),
                      metric.stride(0),
                      per_head ? metric.stride(1) : 0,
                      metric.stride(token_dim),
                      metric.stride(token_dim + 1),
                      per_head ? static_cast<int>(metric.size(1)) : 1,
                      static_cast<int>(metric.size(-1)),
                      per_head,
                      false};
  view.vectorised = view.stride_d == 1 && view.width % 8 == 0 && aligned16(view.data) &&
                    stride_multiple(metric, 0, 8) && (!per_head || stride_multiple(metric, 1, 8)) &&
                    stride_multiple(metric, token_dim, 8);
  return view;
}

// Targets per similarity work item: the fewest chunks of at most kMaxTargetsPerItem targets,
// split further (down to 4 per chunk) while every (remaining token, chunk) item still fits one
// pass of the block.
void choose_target_chunks(int n_rem, int n_targets, PlanShape& shape) {
  int n_chunks = static_cast<int>(ceil_div(n_targets, kMaxTargetsPerItem));
  if (static_cast<int64_t>(n_rem) * n_chunks <= kPlanThreads) {
    n_chunks = std::max(n_chunks, std::min(static_cast<int>(ceil_div(n_targets, 4)), kPlanThreads / n_rem));
  }
  shape.target_chunk = static_cast<int>(4 * ceil_div(ceil_div(n_targets, n_chunks), 4));
  shape.n_chunks = static_cast<int>(ceil_div(n_targets, shape.target_chunk));
}

template <typename attn_t, typename key_t>
void launch_plan(const Tensor& attn, const Tensor& metric, PlanShape shape, Tensor& dominant_idx, Tensor& plan,
                 cudaStream_t stream) {
  const int width = static_cast<int>(metric.size(-1));
  const int target_pitch = shape.n_chunks * shape.target_chunk;
  size_t smem = PlanLayout(shape.n_tokens, target_pitch, 0).bytes;
  if (shape.k_ctx > 0) {
    int opt_in = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&opt_in, cudaDevAttrMaxSharedMemoryPerBlockOptin, plan.get_device()));
    const size_t per_channel = PlanLayout(shape.n_tokens, target_pitch, 1).bytes - smem;
    int64_t tile = static_cast<size_t>(opt_in) > smem ? static_cast<int64_t>((opt_in - smem) / per_channel) : 0;
    tile = std::min<int64_t>(tile, std::max(width, 1));
    if (tile >= 8 && tile < width) tile -= tile % 8;  // whole 16-byte chunks of channels per tile
    TORCH_CHECK(tile >= 1, "zip_tokens: backend='cuda' needs ", smem + per_channel,
                " bytes of shared memory per block, the device allows ", opt_in);
    shape.tile_channels = static_cast<int>(tile);
    smem = PlanLayout(shape.n_tokens, target_pitch, shape.tile_channels).bytes;
  }
  auto* kernel = &zip_plan_kernel<attn_t, key_t>;
  if (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  const auto batch = static_cast<unsigned>(attn.size(0));
  kernel<<<batch, kPlanThreads, smem, stream>>>(attn_input<attn_t>(attn, shape.has_cls), metric_input<key_t>(metric),
                                                shape, dominant_idx.mutable_data_ptr<int64_t>(),
                                                plan.mutable_data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int VEC>
void launch_apply_as(const Tensor& hidden, const Tensor& plan, Tensor& tokens, ApplyShape shape, cudaStream_t stream) {
  constexpr int kLanesC = apply_channel_lanes(VEC);
  // Token lanes: a power of two from 4 up to kApplyMaxThreads / kLanesC, the fewest that give each
  // lane at most one batch of kApplyUnroll rows (small images need fewer threads).
  const int rows = std::max(shape.k_dom, shape.k_ctx > 0 ? shape.n_tokens - shape.k_dom : 0);
  int token_lanes = 4;
  while (token_lanes * kApplyUnroll < rows && 2 * token_lanes * kLanesC <= kApplyMaxThreads) token_lanes *= 2;
  shape.channel_blocks = static_cast<int>(ceil_div(shape.width, kLanesC * VEC));
  const int64_t blocks = hidden.size(0) * shape.channel_blocks;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "zip_tokens: batch too large for one launch");
  const size_t smem = sizeof(float) * token_lanes * (kLanesC * VEC + 1);
  const HiddenInput<T> view{hidden.const_data_ptr<T>(), hidden.stride(0), hidden.stride(1), hidden.stride(2)};
  zip_apply_kernel<T, VEC><<<static_cast<unsigned>(blocks), token_lanes * kLanesC, smem, stream>>>(
      view, shape, plan.const_data_ptr<int32_t>(), tokens.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_apply(const Tensor& hidden, const Tensor& plan, Tensor& tokens, ApplyShape shape, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const bool vectorised = hidden.stride(2) == 1 && shape.width % kVec == 0 && aligned16(hidden.const_data_ptr()) &&
                          stride_multiple(hidden, 0, kVec) && stride_multiple(hidden, 1, kVec);
  if (vectorised) {
    launch_apply_as<T, kVec>(hidden, plan, tokens, shape, stream);
  } else {
    launch_apply_as<T, 1>(hidden, plan, tokens, shape, stream);
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
  Tensor plan = at::empty({batch, n_tokens + 2 * k_ctx}, hidden.options().dtype(at::kInt));
  const Tensor& metric = keys.has_value() ? *keys : hidden;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  PlanShape plan_shape{static_cast<int>(n_tokens), static_cast<int>(k_dom), static_cast<int>(k_ctx), has_cls, 4, 0, 0,
                       plan.stride(0)};
  if (k_ctx > 0) choose_target_chunks(static_cast<int>(n_tokens - k_dom), static_cast<int>(k_ctx), plan_shape);
  VISIONZIP_DISPATCH_FLOAT(attn.scalar_type(), "zip_tokens_cuda_plan", [&] {
    using attn_t = scalar_t;
    VISIONZIP_DISPATCH_FLOAT(metric.scalar_type(), "zip_tokens_cuda_plan", [&] {
      launch_plan<attn_t, scalar_t>(attn, metric, plan_shape, dominant_idx, plan, stream);
    });
  });

  if (width > 0) {
    const ApplyShape apply_shape{static_cast<int>(n_tokens), static_cast<int>(width), static_cast<int>(k_dom),
                                 static_cast<int>(k_ctx), 0, plan.stride(0)};
    VISIONZIP_DISPATCH_FLOAT(hidden.scalar_type(), "zip_tokens_cuda_apply", [&] {
      launch_apply<scalar_t>(hidden, plan, tokens, apply_shape, stream);
    });
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
