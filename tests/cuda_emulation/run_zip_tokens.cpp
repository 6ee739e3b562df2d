// Runs the kernels of csrc/zip_tokens_cuda.cuh and csrc/zip_apply_cuda.cuh on the CPU
// (device_primitives_host.h), launched as csrc/zip_tokens_cuda.cu launches them, with the launch
// shapes of csrc/zip_tokens_launch.h or explicit ones, for tests/test_zip_tokens_cuda_emulated.py.
//
//   run_zip_tokens NAME=VALUE ...
//
// hidden, attn, keys: a tensor as FILE:DTYPE:OFFSET:SIZES:STRIDES (sizes and strides comma
// separated, in elements; the file holds the tensor's storage, read into an exact-size, 16-byte
// aligned copy);
// keys may be "-" (the metric is hidden). k_dom, k_ctx, has_cls: the op's arguments. sm_count,
// shared_opt_in: the device the launch shapes are chosen for. positions_per_block, target_chunk,
// tile_channels, channel_lanes, row_lanes: explicit launch shapes (0: chosen as on the GPU).
// vectorise: 0 forces the apply kernel's scalar path. tokens, dominant_idx: output files (float32
// values of the tokens, int64 indices). Prints the launch shapes it used.
#include "device_primitives_host.h"

#include "exact_storage.h"
#include "zip_tokens_launch.h"

#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using namespace visionzip::cuda;
using emulation::Index3;

struct TensorArg {
  emulation::ExactStorage storage;
  std::string dtype;
  int64_t offset = 0;
  std::vector<int64_t> sizes, strides;
};

std::vector<int64_t> int_list(const std::string& text) {
  std::vector<int64_t> values;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) values.push_back(std::stoll(item));
  return values;
}

TensorArg read_tensor(const std::string& spec) {
  std::vector<std::string> parts;
  std::stringstream stream(spec);
  std::string part;
  while (std::getline(stream, part, ':')) parts.push_back(part);
  if (parts.size() != 5) throw std::runtime_error("tensor spec FILE:DTYPE:OFFSET:SIZES:STRIDES expected: " + spec);
  TensorArg t;
  t.storage = emulation::read_storage(parts[0]);
  t.dtype = parts[1];
  t.offset = std::stoll(parts[2]);
  t.sizes = int_list(parts[3]);
  t.strides = int_list(parts[4]);
  return t;
}

template <typename T>
const T* data_of(const TensorArg& t) {
  return reinterpret_cast<const T*>(t.storage.data()) + t.offset;
}

// Calls f(T{}) with T the element type named by `dtype`.
template <typename F>
void with_dtype(const std::string& dtype, F&& f) {
  if (dtype == "float32") {
    f(float{});
  } else if (dtype == "float16") {
    f(__half{});
  } else if (dtype == "bfloat16") {
    f(__nv_bfloat16{});
  } else {
    throw std::runtime_error("unknown dtype " + dtype);
  }
}

template <typename T>
AttnInput<T> attn_input(const TensorArg& attn, bool has_cls) {
  return attn_view(data_of<T>(attn), static_cast<int>(attn.sizes.size()), attn.sizes.data(), attn.strides.data(),
                   has_cls);
}

template <typename T>
MetricInput<T> metric_input(const TensorArg& metric) {
  return metric_view(data_of<T>(metric), static_cast<int>(metric.sizes.size()), metric.sizes.data(),
                     metric.strides.data());
}

struct Run {
  std::map<std::string, std::string> args;
  int get(const std::string& name) const { return std::stoi(args.at(name)); }
};

template <typename T, int VEC>
void apply(const TensorArg& hidden, const ApplyShape& shape, size_t smem, const std::vector<int32_t>& plan,
           std::vector<T>& tokens) {
  const int64_t batch = hidden.sizes[0];
  const HiddenInput view{hidden.strides[0], hidden.strides[1], hidden.strides[2]};
  const Index3 grid{static_cast<unsigned>(batch * shape.channel_blocks), 1, 1};
  emulation::launch(grid, shape.channel_lanes * shape.row_lanes, static_cast<int>(smem), [&] {
    zip_apply_kernel<T, VEC>(data_of<T>(hidden), view, shape, plan.data(), tokens.data());
  });
}

template <typename T>
void run_apply(const Run& run, const TensorArg& hidden, const DeviceLimits& device, const LaunchOverrides& over,
               const std::vector<int32_t>& plan, std::vector<float>& out) {
  const int64_t batch = hidden.sizes[0];
  const int width = static_cast<int>(hidden.sizes[2]);
  const int k_dom = run.get("k_dom"), k_ctx = run.get("k_ctx");
  std::vector<T> tokens(static_cast<size_t>(batch) * (k_dom + k_ctx) * width, from_float<T>(NAN));
  ApplyLaunch launch{1, {}, 0};
  if (width > 0) {
    launch = apply_launch(data_of<T>(hidden), hidden.sizes.data(), hidden.strides.data(), sizeof(T), k_dom, k_ctx,
                          device, over, run.get("vectorise") != 0);
    if (launch.shape.channel_lanes == 0) throw std::runtime_error("apply kernel: shared memory too small");
    if (launch.vec > 1) {
      apply<T, 16 / sizeof(T)>(hidden, launch.shape, launch.shared_bytes, plan, tokens);
    } else {
      apply<T, 1>(hidden, launch.shape, launch.shared_bytes, plan, tokens);
    }
  }
  out.resize(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) out[i] = to_float(tokens[i]);
  std::printf("apply: vec=%d channel_lanes=%d row_lanes=%d channel_blocks=%d\n", launch.vec,
              launch.shape.channel_lanes, launch.shape.row_lanes, launch.shape.channel_blocks);
}

void run_all(const Run& run) {
  const TensorArg hidden = read_tensor(run.args.at("hidden")), attn = read_tensor(run.args.at("attn"));
  const bool with_keys = run.args.at("keys") != "-";
  const TensorArg keys = with_keys ? read_tensor(run.args.at("keys")) : TensorArg{};
  const TensorArg& metric = with_keys ? keys : hidden;
  const int64_t batch = hidden.sizes[0];
  const int n_tokens = static_cast<int>(hidden.sizes[1]);
  const int k_dom = run.get("k_dom"), k_ctx = run.get("k_ctx");
  const bool has_cls = run.get("has_cls") != 0;
  const DeviceLimits device{run.get("sm_count"), static_cast<size_t>(run.get("shared_opt_in"))};
  LaunchOverrides over;
  over.positions_per_block = run.get("positions_per_block");
  over.target_chunk = run.get("target_chunk");
  over.tile_channels = run.get("tile_channels");
  over.channel_lanes = run.get("channel_lanes");
  over.row_lanes = run.get("row_lanes");

  const int64_t stride = plan_slots(n_tokens, k_dom);
  std::vector<int32_t> plan(static_cast<size_t>(batch * stride), -7777777);  // poison: an index far out of range
  std::vector<int64_t> dominant_idx(static_cast<size_t>(batch * k_dom), -1);

  const SelectShape select{n_tokens, k_dom, has_cls, stride};
  with_dtype(attn.dtype, [&](auto attn_zero) {
    using A = decltype(attn_zero);
    const AttnInput<A> view = attn_input<A>(attn, has_cls);
    emulation::launch({static_cast<unsigned>(batch), 1, 1}, kSelectThreads,
                      static_cast<int>(SelectLayout(n_tokens).bytes),
                      [&] { zip_select_kernel<A>(view, select, dominant_idx.data(), plan.data()); });
  });
  if (k_ctx > 0) {
    with_dtype(metric.dtype, [&](auto key_zero) {
      using K = decltype(key_zero);
      const MetricInput<K> view = metric_input<K>(metric);
      size_t smem = 0;
      const AssignShape shape =
          assign_shape(batch, n_tokens, k_dom, k_ctx, view.width, device, over, smem);
      if (shape.tile_channels < 1) throw std::runtime_error("assign kernel: shared memory too small");
      const Index3 grid{static_cast<unsigned>(batch * shape.position_blocks), 1, 1};
      emulation::launch(grid, kAssignThreads, static_cast<int>(smem),
                        [&] { zip_assign_kernel<K>(view, shape, plan.data()); });
      std::printf("assign: positions_per_block=%d position_blocks=%d target_chunk=%d tile_channels=%d vectorised=%d\n",
                  shape.positions_per_block, shape.position_blocks, shape.target_chunk, shape.tile_channels,
                  view.vectorised ? 1 : 0);
    });
  }
  std::vector<float> tokens;
  with_dtype(hidden.dtype, [&](auto zero) { run_apply<decltype(zero)>(run, hidden, device, over, plan, tokens); });

  std::ofstream(run.args.at("tokens"), std::ios::binary)
      .write(reinterpret_cast<const char*>(tokens.data()), static_cast<std::streamsize>(tokens.size() * sizeof(float)));
  std::ofstream(run.args.at("dominant_idx"), std::ios::binary)
      .write(reinterpret_cast<const char*>(dominant_idx.data()),
             static_cast<std::streamsize>(dominant_idx.size() * sizeof(int64_t)));
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Run run;
    for (int i = 1; i < argc; ++i) {
      const std::string arg = argv[i];
      const size_t eq = arg.find('=');
      if (eq == std::string::npos) throw std::runtime_error("NAME=VALUE expected: " + arg);
      run.args[arg.substr(0, eq)] = arg.substr(eq + 1);
    }
    run_all(run);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s\n", error.what());
    return 1;
  }
  return 0;
}
