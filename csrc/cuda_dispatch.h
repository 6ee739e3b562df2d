// The dtype dispatch of the CUDA C++ entry points (zip_tokens_cuda.cu, zip_tokens_varlen_cuda.cu):
// float32, float16 and bfloat16, and the CUDA element type of each, since the kernels use CUDA's own
// 16-bit types.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#define VISIONZIP_DISPATCH_FLOAT(TYPE, NAME, ...)                                   \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)          \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)       \
                                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

namespace visionzip::cuda {

template <typename T>
struct DeviceScalar {
  using type = T;
};
template <>
struct DeviceScalar<at::Half> {
  using type = __half;
};
template <>
struct DeviceScalar<at::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename T>
const typename DeviceScalar<T>::type* device_data(const at::Tensor& t) {
  return reinterpret_cast<const typename DeviceScalar<T>::type*>(t.const_data_ptr<T>());
}

}  // namespace visionzip::cuda
