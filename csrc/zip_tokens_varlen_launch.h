// Launches of the zip_tokens_varlen CUDA kernels (zip_tokens_varlen_cuda.cuh), decided on the host
// from the sizes it knows: the segment tables, grids and blocks, and the workspace sizes. Shared by
// csrc/zip_tokens_varlen_cuda.cu and the CPU emulation (tests/cuda_emulation/run_zip_tokens_varlen.cpp),
// so both launch the kernels the same way. Both kernels read the channels one element at a time
// (vector width 1) and use static shared memory only (no dynamic shared memory).
#pragma once

#include "zip_tokens_varlen_cuda.cuh"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace visionzip::cuda_varlen {

// One launch of each kernel over the segments of `table`.
struct VarlenLaunch {
  SegmentTable table;
  int64_t plan_blocks;     // one per segment, kPlanThreads threads each
  int target_blocks;       // blocks of kApplyTargets target slots per segment, for the widest k_ctx
  int64_t apply_blocks_x;  // segments x target_blocks, kApplyThreads threads each
  int64_t apply_blocks_y;  // blocks of kApplyThreads channels
};

struct VarlenLaunches {
  std::vector<VarlenLaunch> launches;  // segments_per_launch segments each, the last one fewer
  int64_t kept_rows = 0;               // K_total
  int64_t target_slots = 0;            // the sum of k_ctx: rows of the target workspaces
};

// The launches for n segments of seqlens[i] tokens keeping k_dom[i] + k_ctx[i] (checked by the
// caller: 0 <= k_dom[i] + k_ctx[i] <= seqlens[i]) and hidden rows of `width` channels, at most
// `segments_per_launch` (1 to kSegmentsPerLaunch; fewer only to test the split) per launch.
inline VarlenLaunches varlen_launches(const int64_t* seqlens, const int64_t* k_dom, const int64_t* k_ctx, int64_t n,
                                      int64_t width, int segments_per_launch = kSegmentsPerLaunch) {
  VarlenLaunches result;
  int64_t start = 0;
  for (int64_t first = 0; first < n; first += segments_per_launch) {
    VarlenLaunch launch{};
    launch.table.first = first;
    launch.table.count = static_cast<int>(std::min<int64_t>(segments_per_launch, n - first));
    int64_t widest_ctx = 0;
    for (int local = 0; local < launch.table.count; ++local) {
      const int64_t seg = first + local;
      launch.table.start[local] = start;
      launch.table.out_start[local] = result.kept_rows;
      launch.table.ctx_start[local] = result.target_slots;
      launch.table.n_tokens[local] = static_cast<int>(seqlens[seg]);
      launch.table.k_dom[local] = static_cast<int>(k_dom[seg]);
      launch.table.k_ctx[local] = static_cast<int>(k_ctx[seg]);
      start += seqlens[seg];
      result.kept_rows += k_dom[seg] + k_ctx[seg];
      result.target_slots += k_ctx[seg];
      widest_ctx = std::max(widest_ctx, k_ctx[seg]);
    }
    launch.plan_blocks = launch.table.count;
    launch.target_blocks = static_cast<int>(std::max<int64_t>(1, (widest_ctx + kApplyTargets - 1) / kApplyTargets));
    launch.apply_blocks_x = launch.table.count * int64_t{launch.target_blocks};
    launch.apply_blocks_y = (width + kApplyThreads - 1) / kApplyThreads;
    result.launches.push_back(launch);
  }
  return result;
}

}  // namespace visionzip::cuda_varlen
