// Runs the kernels of csrc/zip_tokens_varlen_cuda.cuh on the CPU (device_primitives_host.h), launched
// with the launches of csrc/zip_tokens_varlen_launch.h, as csrc/zip_tokens_varlen_cuda.cu launches
// them, for tests/test_zip_tokens_varlen_cuda_emulated.py.
//
//   run_zip_tokens_varlen NAME=VALUE ...
//
// hidden, importance, keys, cu_seqlens: tensors as FILE:DTYPE:OFFSET:SIZES:STRIDES (runner_io.h);
// keys "-" (the metric is hidden); cu_seqlens "-" (checked on the host, as a CPU cu_seqlens is) or
// int32/int64 offsets that the kernels compare with the host's sizes, as a GPU cu_seqlens is.
// seqlens, k_dom, k_ctx: comma-separated counts per segment (checked by the caller).
// segments_per_launch: an explicit launch split (0: as on the GPU). tokens, kept_idx,
// cu_kept: output files (float32 values of the tokens, int64 indices and offsets). Workspaces and
// outputs start as poison between guard zones, checked after the launches. Prints each launch.
#include "runner_io.h"

#include "zip_tokens_varlen_launch.h"

#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using namespace visionzip::cuda_varlen;
using emulation::Args;
using emulation::GuardedBuffer;
using emulation::Index3;
using emulation::TensorArg;

constexpr int32_t kPoisonIndex = -7777777;  // far outside every buffer
constexpr float kPoisonValue = -7777777.f;  // no token's value (-inf as float16), nor NaN, which refused rows hold

struct Workspace {
  GuardedBuffer<int32_t> destination, target_tok, target_row;
  GuardedBuffer<float> unit;

  Workspace(int64_t total, const VarlenLaunches& plan, int key_width)
      : destination(total, kPoisonIndex),
        target_tok(plan.target_slots, kPoisonIndex),
        target_row(plan.target_slots, kPoisonIndex),
        unit(plan.target_slots * key_width, NAN) {}

  PlanWorkspace pointers() { return {destination.data(), target_tok.data(), target_row.data(), unit.data()}; }

  void check_guards() const {
    destination.check_guards("destination");
    target_tok.check_guards("target_tok");
    target_row.check_guards("target_row");
    unit.check_guards("unit");
  }
};

CuSeqlens device_cu_seqlens(const TensorArg* cu) {
  if (cu == nullptr) return {nullptr, 0, false};
  if (cu->dtype != "int32" && cu->dtype != "int64") throw std::runtime_error("cu_seqlens must be int32 or int64");
  const bool is_int64 = cu->dtype == "int64";
  const void* data = is_int64 ? static_cast<const void*>(cu->data<int64_t>()) : cu->data<int32_t>();
  return {data, cu->strides[0], is_int64};
}

void run(const Args& args) {
  const TensorArg hidden = emulation::read_tensor(args.text("hidden"));
  const TensorArg importance = emulation::read_tensor(args.text("importance"));
  const bool with_keys = args.text("keys") != "-", with_cu = args.text("cu_seqlens") != "-";
  const TensorArg keys = with_keys ? emulation::read_tensor(args.text("keys")) : TensorArg{};
  const TensorArg cu_arg = with_cu ? emulation::read_tensor(args.text("cu_seqlens")) : TensorArg{};
  const TensorArg& metric = with_keys ? keys : hidden;
  const std::vector<int64_t> seqlens = emulation::int_list(args.text("seqlens"));
  const std::vector<int64_t> k_dom = emulation::int_list(args.text("k_dom")), k_ctx = emulation::int_list(args.text("k_ctx"));
  const auto n = static_cast<int64_t>(seqlens.size());
  const int64_t total = hidden.sizes[0], width = hidden.sizes[1];
  const int key_width = static_cast<int>(metric.sizes[1]);

  const int split = static_cast<int>(args.integer("segments_per_launch"));
  if (split < 0 || split > kSegmentsPerLaunch) throw std::runtime_error("segments_per_launch out of range");
  const VarlenLaunches plan =
      varlen_launches(seqlens.data(), k_dom.data(), k_ctx.data(), n, width, split > 0 ? split : kSegmentsPerLaunch);
  const CuSeqlens cu = device_cu_seqlens(with_cu ? &cu_arg : nullptr);
  Workspace work(total, plan, key_width);
  GuardedBuffer<int64_t> kept_idx(plan.kept_rows, kPoisonIndex), cu_kept(n + 1, kPoisonIndex);
  std::vector<float> tokens;

  for (const VarlenLaunch& launch : plan.launches) {
    emulation::with_dtype(importance.dtype, [&](auto imp_zero) {
      using I = decltype(imp_zero);
      emulation::with_dtype(metric.dtype, [&](auto key_zero) {
        using K = decltype(key_zero);
        emulation::launch({static_cast<unsigned>(launch.plan_blocks), 1, 1}, kPlanThreads, 0, [&] {
          zip_varlen_plan_kernel<I, K>(importance.data<I>(), importance.strides[0], metric.data<K>(), metric.strides[0],
                                       metric.strides[1], key_width, launch.table, cu, work.pointers(),
                                       kept_idx.data(), cu_kept.data());
        });
      });
    });
    std::printf("launch: segments=%d plan_blocks=%lld apply_blocks=%lldx%lld target_blocks=%d\n", launch.table.count,
                static_cast<long long>(launch.plan_blocks), static_cast<long long>(launch.apply_blocks_x),
                static_cast<long long>(launch.apply_blocks_y), launch.target_blocks);
  }
  emulation::with_dtype(hidden.dtype, [&](auto zero) {
    using T = decltype(zero);
    GuardedBuffer<T> out(plan.kept_rows * width, visionzip::cuda::from_float<T>(kPoisonValue));
    for (const VarlenLaunch& launch : plan.launches) {
      const Index3 grid{static_cast<unsigned>(launch.apply_blocks_x), static_cast<unsigned>(launch.apply_blocks_y), 1};
      emulation::launch(grid, kApplyThreads, 0, [&] {
        zip_varlen_apply_kernel<T>(hidden.data<T>(), hidden.strides[0], hidden.strides[1], static_cast<int>(width),
                                   launch.table, launch.target_blocks, cu, work.destination.data(),
                                   work.target_tok.data(), work.target_row.data(), out.data());
      });
    }
    out.check_guards("tokens");
    for (size_t i = 0; i < out.size(); ++i) tokens.push_back(visionzip::cuda::to_float(out.data()[i]));
  });
  work.check_guards();
  kept_idx.check_guards("kept_idx");
  cu_kept.check_guards("cu_kept");
  emulation::write_file(args.text("tokens"), tokens);
  emulation::write_file(args.text("kept_idx"), std::vector<int64_t>(kept_idx.data(), kept_idx.data() + kept_idx.size()));
  emulation::write_file(args.text("cu_kept"), std::vector<int64_t>(cu_kept.data(), cu_kept.data() + cu_kept.size()));
}

}  // namespace

int main(int argc, char** argv) { return emulation::run_main(argc, argv, run); }
