// Runs the kernels of csrc/attention_importance_cuda.cuh on the CPU (device_primitives_host.h),
// launched as csrc/attention_importance_cuda.cu launches them, for
// tests/test_attention_importance_cuda_emulated.py.
//
//   run_attention_importance DTYPE HAS_CLS SCALE B H N HD
//       Q_FILE Q_OFFSET Q_STRIDES(4) K_FILE K_OFFSET K_STRIDES(4) LSE_FILE|- LSE_STRIDES(3) OUT_FILE
//
// DTYPE: float32, float16 or bfloat16. Each input file holds a tensor's storage (raw elements);
// the tensor starts OFFSET elements into an exact-size, 16-byte aligned copy of the file, and is
// read through STRIDES (elements). LSE_FILE "-": no lse. OUT_FILE receives the [B, H, N] float32
// importance. Prints the kernels that ran: "path=cls|mma|simt vectorised=0|1".
#include "device_primitives_host.h"

#include "attention_importance_cuda.cuh"
#include "exact_storage.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using namespace visionzip::cuda::importance;
using emulation::Index3;

using emulation::read_storage;
using Storage = emulation::ExactStorage;

struct Args {
  std::string dtype;
  bool has_cls;
  double scale;
  int64_t sizes[4];
  std::string q_file, k_file, lse_file, out_file;
  int64_t q_offset, k_offset;
  int64_t q_strides[4], k_strides[4], lse_strides[3];
};

Args parse(int argc, char** argv) {
  if (argc != 25) throw std::runtime_error("expected 24 arguments");
  Args args;
  int i = 1;
  const auto next = [&] { return std::string(argv[i++]); };
  const auto next_int = [&] { return std::stoll(argv[i++]); };
  args.dtype = next();
  args.has_cls = next_int() != 0;
  args.scale = std::stod(next());
  for (auto& size : args.sizes) size = next_int();
  args.q_file = next();
  args.q_offset = next_int();
  for (auto& stride : args.q_strides) stride = next_int();
  args.k_file = next();
  args.k_offset = next_int();
  for (auto& stride : args.k_strides) stride = next_int();
  args.lse_file = next();
  for (auto& stride : args.lse_strides) stride = next_int();
  args.out_file = next();
  return args;
}

template <typename T>
void run(const Args& args) {
  const Storage q_storage = read_storage(args.q_file), k_storage = read_storage(args.k_file);
  const T* q_data = reinterpret_cast<const T*>(q_storage.data()) + args.q_offset;
  const T* k_data = reinterpret_cast<const T*>(k_storage.data()) + args.k_offset;
  const auto [batch, heads, n_tokens, head_dim] = args.sizes;
  const int64_t batch_heads = batch * heads;

  const bool vector_layout =
      rows_in_16_bytes(reinterpret_cast<uintptr_t>(q_data), args.sizes, args.q_strides, sizeof(T)) &&
      rows_in_16_bytes(reinterpret_cast<uintptr_t>(k_data), args.sizes, args.k_strides, sizeof(T));
  const LaunchPlan plan = plan_launch(args.has_cls, sizeof(T) == 2, static_cast<int>(head_dim), n_tokens, vector_layout);
  const ImportanceShape shape{static_cast<int>(heads), static_cast<int>(n_tokens),
                              args.has_cls ? 1 : static_cast<int>(n_tokens), static_cast<int>(head_dim),
                              static_cast<float>(args.scale * 1.4426950408889634)};
  const HeadsView<T> q{q_data, args.q_strides[0], args.q_strides[1], args.q_strides[2], args.q_strides[3]};
  const HeadsView<T> k{k_data, args.k_strides[0], args.k_strides[1], args.k_strides[2], args.k_strides[3]};

  std::vector<float> out(static_cast<size_t>(batch_heads * n_tokens), NAN);
  Storage lse_storage;
  LseView<const float> lse_in{nullptr, 0, 0, 0};
  if (args.lse_file != "-") {
    lse_storage = read_storage(args.lse_file);
    lse_in = {reinterpret_cast<const float*>(lse_storage.data()), args.lse_strides[0], args.lse_strides[1],
              args.lse_strides[2]};
  }
  const char* path = "cls";
  const Index3 head_grid{static_cast<unsigned>(batch_heads), 1, 1};
  const Index3 grid{static_cast<unsigned>(batch_heads), static_cast<unsigned>(plan.row_blocks), 1};

  if (plan.path == KernelPath::kClsRow) {
    emulation::launch(head_grid, kClsThreads, 0, [&] {
      if (plan.vectorised) {
        cls_row_kernel<T, 16 / sizeof(T)>(q, k, lse_in, shape, out.data());
      } else {
        cls_row_kernel<T, 1>(q, k, lse_in, shape, out.data());
      }
    });
  } else {
    std::vector<float> workspace;
    const bool lse_given = lse_in.data != nullptr;
    LseView<float> lse_out{nullptr, 0, 0, 0};
    if (!lse_given) {
      workspace.assign(out.size(), NAN);
      lse_out = {workspace.data(), heads * n_tokens, n_tokens, 1};
      lse_in = {workspace.data(), heads * n_tokens, n_tokens, 1};
    }
    if (plan.path == KernelPath::kMma) {
      path = "mma";
      if constexpr (sizeof(T) == 2) {
        const auto pass = [&](auto column_pass) {
          emulation::launch(grid, kMmaThreads, plan.shared_bytes, [&] {
            if (plan.vectorised) {
              mma_pass_kernel<T, decltype(column_pass)::value, true>(q, k, lse_in, lse_out, shape, plan.dim_padded,
                                                                     out.data());
            } else {
              mma_pass_kernel<T, decltype(column_pass)::value, false>(q, k, lse_in, lse_out, shape, plan.dim_padded,
                                                                      out.data());
            }
          });
        };
        if (!lse_given) pass(std::false_type{});
        pass(std::true_type{});
      }
    } else {
      path = "simt";
      if (!lse_given) {
        emulation::launch(grid, kSimtThreads, 0, [&] { simt_pass_kernel<T, false>(q, k, lse_in, lse_out, shape, out.data()); });
      }
      emulation::launch(grid, kSimtThreads, 0, [&] { simt_pass_kernel<T, true>(q, k, lse_in, lse_out, shape, out.data()); });
    }
  }
  std::ofstream(args.out_file, std::ios::binary)
      .write(reinterpret_cast<const char*>(out.data()), static_cast<std::streamsize>(out.size() * sizeof(float)));
  std::printf("path=%s vectorised=%d\n", path, plan.vectorised ? 1 : 0);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args args = parse(argc, argv);
    if (args.dtype == "float32") {
      run<float>(args);
    } else if (args.dtype == "float16") {
      run<__half>(args);
    } else if (args.dtype == "bfloat16") {
      run<__nv_bfloat16>(args);
    } else {
      throw std::runtime_error("unknown dtype " + args.dtype);
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s\n", error.what());
    return 1;
  }
  return 0;
}
