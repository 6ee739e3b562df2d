// Runs the kernels of csrc/zip_tokens_cuda.cuh and csrc/zip_apply_cuda.cuh on the CPU
// (device_primitives_host.h), launched as csrc/zip_tokens_cuda.cu launches them, with the launch
// shapes of csrc/zip_tokens_launch.h or explicit ones, for tests/test_zip_tokens_cuda_emulated.py.
//
//   run_zip_tokens NAME=VALUE ...
//
// hidden, attn, keys: a tensor as FILE:DTYPE:OFFSET:SIZES:STRIDES (sizes and strides comma
// separated, in elements; the file holds the tensor's storage, read into a 16-byte aligned copy);
// keys may be "-" (the metric is hidden). k_dom, k_ctx, has_cls: the op's arguments. sm_count,
// shared_opt_in: the device the launch shapes are chosen for. positions_per_block, target_chunk,
// tile_channels, channel_lanes, row_lanes: explicit launch shapes (0: chosen as on the GPU).
// vectorise: 0 forces the apply kernel's scalar path. tokens, dominant_idx: output files (float32
// values of the tokens, int64 indices). Prints the launch shapes it used.
#include "device_primitives_host.h"

#include "zip_tokens_launch.h"

#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using namespace visionzip::cuda;
using emulation::Index3;

struct TensorArg {
  std::vector<unsigned char> bytes;
  unsigned char* aligned = nullptr;
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
  std::ifstream file(parts[0], std::ios::binary);
  if (!file) throw std::runtime_error("cannot read " + parts[0]);
  std::vector<unsigned char> content((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  TensorArg t;
  t.bytes.resize(content.size() + 16);
  const auto address = reinterpret_cast<uintptr_t>(t.bytes.data());
  t.aligned = t.bytes.data() + (16 - address % 16) % 16;
  std::copy(content.begin(), content.end(), t.aligned);
  t.dtype = parts[1];
  t.offset = std::stoll(parts[2]);
  t.sizes = int_list(parts[3]);
  t.strides = int_list(parts[4]);
  return t;
}

template <typename T>
const T* data_of(const TensorArg& t) {
  return reinterpret_cast<const T*>(t.aligned) + t.offset;
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

bool stride_multiple(const TensorArg& t, size_t dim, int64_t multiple) {
  return t.sizes[dim] == 1 || t.strides[dim] % multiple == 0;
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

// As attn_input in csrc/zip_tokens_cuda.cu.
template <typename T>
AttnInput<T> attn_input(const TensorArg& attn, bool has_cls) {
  AttnInput<T> view{data_of<T>(attn), attn.strides[0], 0, 0, 0, 1, false};
  if (attn.sizes.size() == 2) {
    view.stride_k = attn.strides[1];
    return view;
  }
  view.heads = static_cast<int>(attn.sizes[1]);
  view.stride_h = attn.strides[1];
  if (attn.sizes.size() == 3) {
    view.stride_k = attn.strides[2];
    return view;
  }
  view.stride_q = attn.strides[2];
  view.stride_k = attn.strides[3];
  view.sum_queries = !has_cls;
  return view;
}

// As metric_input in csrc/zip_tokens_cuda.cu.
template <typename T>
MetricInput<T> metric_input(const TensorArg& metric) {
  const bool per_head = metric.sizes.size() == 4;
  const size_t token_dim = metric.sizes.size() - 2;
  MetricInput<T> view{data_of<T>(metric),
                      metric.strides[0],
                      per_head ? metric.strides[1] : 0,
                      metric.strides[token_dim],
                      metric.strides[token_dim + 1],
                      per_head ? static_cast<int>(metric.sizes[1]) : 1,
                      static_cast<int>(metric.sizes.back()),
                      per_head,
                      false};
  view.vectorised = view.stride_d == 1 && view.width % 8 == 0 && aligned16(view.data) &&
                    stride_multiple(metric, 0, 8) && (!per_head || stride_multiple(metric, 1, 8)) &&
                    stride_multiple(metric, token_dim, 8);
  return view;
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
  constexpr int kVec = 16 / sizeof(T);
  const int64_t batch = hidden.sizes[0];
  const int n_tokens = static_cast<int>(hidden.sizes[1]), width = static_cast<int>(hidden.sizes[2]);
  const int k_dom = run.get("k_dom"), k_ctx = run.get("k_ctx");
  std::vector<T> tokens(static_cast<size_t>(batch) * (k_dom + k_ctx) * width, from_float<T>(NAN));
  const bool vectorised = run.get("vectorise") && hidden.strides[2] == 1 && width % kVec == 0 &&
                          aligned16(data_of<T>(hidden)) && stride_multiple(hidden, 0, kVec) &&
                          stride_multiple(hidden, 1, kVec);
  size_t smem = 0;
  ApplyShape shape{};
  int vec = 1;
  if (width > 0) {
    if (vectorised) shape = apply_shape(batch, n_tokens, k_dom, k_ctx, width, kVec, device, over, smem);
    if (vectorised && shape.channel_lanes > 0) {
      vec = kVec;
      apply<T, kVec>(hidden, shape, smem, plan, tokens);
    } else {
      shape = apply_shape(batch, n_tokens, k_dom, k_ctx, width, 1, device, over, smem);
      if (shape.channel_lanes == 0) throw std::runtime_error("apply kernel: shared memory too small");
      apply<T, 1>(hidden, shape, smem, plan, tokens);
    }
  }
  out.resize(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) out[i] = to_float(tokens[i]);
  std::printf("apply: vec=%d channel_lanes=%d row_lanes=%d channel_blocks=%d\n", vec, shape.channel_lanes,
              shape.row_lanes, shape.channel_blocks);
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
