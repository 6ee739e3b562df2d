// Launch parameters of the zip_tokens CUDA kernels (zip_tokens_cuda.cuh, zip_apply_cuda.cuh), chosen
// on the host: the input views the kernels read (from each tensor's data pointer, sizes and
// strides), the vector width, and the launch shapes from the sizes and the device's SM count and
// shared-memory limit. Shared by csrc/zip_tokens_cuda.cu and the CPU emulation
// (tests/cuda_emulation/run_zip_tokens.cpp), which also overrides the shapes to check that no
// choice changes a bit of the output.
#pragma once

#include "zip_apply_cuda.cuh"

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace visionzip::cuda {

struct DeviceLimits {
  int sm_count;
  size_t shared_opt_in;  // bytes of dynamic shared memory a block may opt in to
};

// Explicit launch shapes; 0 leaves the choice to the functions below.
struct LaunchOverrides {
  int positions_per_block = 0, target_chunk = 0, tile_channels = 0;
  int channel_lanes = 0, row_lanes = 0;
};

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Whether stepping along dimension `dim` keeps a `multiple`-element vector aligned (always, for a
// dimension of size 1).
inline bool stride_multiple(const int64_t* sizes, const int64_t* strides, int dim, int64_t multiple) {
  return sizes[dim] == 1 || strides[dim] % multiple == 0;
}

// attn [B, N] (scores), [B, H, N] (CLS rows) or [B, H, N, N] (full maps: with a CLS token only
// query 0 is read, its row starting at offset 0; without, every query is summed).
template <typename T>
AttnInput<T> attn_view(const T* data, int dims, const int64_t* sizes, const int64_t* strides, bool has_cls) {
  AttnInput<T> view{data, strides[0], 0, 0, 0, 1, false};
  if (dims == 2) {
    view.stride_k = strides[1];
    return view;
  }
  view.heads = static_cast<int>(sizes[1]);
  view.stride_h = strides[1];
  if (dims == 3) {
    view.stride_k = strides[2];
    return view;
  }
  view.stride_q = strides[2];
  view.stride_k = strides[3];
  view.sum_queries = !has_cls;
  return view;
}

// The metric: keys [B, N, Dk], per-head keys [B, H, N, hd], or hidden [B, N, D].
template <typename T>
MetricInput<T> metric_view(const T* data, int dims, const int64_t* sizes, const int64_t* strides) {
  const bool per_head = dims == 4;
  const int token_dim = dims - 2;
  MetricInput<T> view{data,
                      strides[0],
                      per_head ? strides[1] : 0,
                      strides[token_dim],
                      strides[token_dim + 1],
                      per_head ? static_cast<int>(sizes[1]) : 1,
                      static_cast<int>(sizes[dims - 1]),
                      per_head,
                      false};
  view.vectorised = view.stride_d == 1 && view.width % 8 == 0 && aligned16(data) &&
                    stride_multiple(sizes, strides, 0, 8) && (!per_head || stride_multiple(sizes, strides, 1, 8)) &&
                    stride_multiple(sizes, strides, token_dim, 8);
  return view;
}

inline int next_pow2(int64_t value) {
  int p = 1;
  while (p < value) p *= 2;
  return p;
}

// The assign kernel's shape and dynamic shared memory (bytes); tile_channels is 0 where no tile fits.
//   - positions_per_block: a multiple of 32 in [32, 256], small enough that the batch's blocks
//     number about two per SM (batch 1: an image over ~17 SMs at N = 577), large enough that the
//     targets' rows, recomputed by every block, stay a small share of a block's rows; then evened
//     out over the image's blocks (N = 577 at batch 256: 3 blocks of 192, not 256 + 256 + 11).
//   - targets per work item: the fewest chunks of at most kMaxTargetsPerItem targets, split
//     further (down to 4 per chunk) while every (position, chunk) item still fits one pass of the
//     block.
//   - tile_channels: as many metric channels as fit the shared memory, all of it when the blocks
//     fit one wave (fewest staging rounds), half of it otherwise (two blocks per SM, as many as
//     the kernel's 128 registers per thread allow).
inline AssignShape assign_shape(int64_t batch, int n_tokens, int k_dom, int k_ctx, int width,
                                const DeviceLimits& device, const LaunchOverrides& over, size_t& shared_bytes) {
  AssignShape shape{n_tokens, k_dom, k_ctx, 0, 0, 0, 0, 0, plan_slots(n_tokens, k_dom)};
  const int n_rem = n_tokens - k_dom;
  int per_block = over.positions_per_block;
  if (per_block == 0) {
    const int64_t blocks_per_image = std::max<int64_t>(1, ceil_div(2 * int64_t{device.sm_count}, batch));
    per_block = static_cast<int>(32 * ceil_div(ceil_div(n_rem, blocks_per_image), 32));
    per_block = std::clamp(per_block, 32, 256);
    const int64_t blocks = ceil_div(n_rem, per_block);  // then as even a split as multiples of 32 give
    per_block = static_cast<int>(32 * ceil_div(ceil_div(n_rem, blocks), 32));
  }
  shape.positions_per_block = std::min(per_block, std::max(n_rem, 1));
  shape.position_blocks = static_cast<int>(ceil_div(n_rem, shape.positions_per_block));

  if (over.target_chunk > 0) {
    shape.target_chunk = over.target_chunk;
  } else {
    int n_chunks = static_cast<int>(ceil_div(k_ctx, kMaxTargetsPerItem));
    if (int64_t{shape.positions_per_block} * n_chunks <= kAssignThreads) {
      n_chunks = std::max(n_chunks, std::min(static_cast<int>(ceil_div(k_ctx, 4)),
                                             kAssignThreads / shape.positions_per_block));
    }
    shape.target_chunk = static_cast<int>(4 * ceil_div(ceil_div(k_ctx, n_chunks), 4));
  }
  shape.n_chunks = static_cast<int>(ceil_div(k_ctx, shape.target_chunk));

  const int n_rows = k_ctx + shape.positions_per_block, pitch = shape.n_chunks * shape.target_chunk;
  const size_t base = AssignLayout(n_rows, shape.positions_per_block, pitch, 0).bytes;
  const size_t per_channel = AssignLayout(n_rows, shape.positions_per_block, pitch, 1).bytes - base;
  int64_t tile = over.tile_channels;
  if (tile == 0) {
    const bool one_wave = batch * shape.position_blocks <= device.sm_count;
    size_t budget = one_wave ? device.shared_opt_in : device.shared_opt_in / 2;
    if (budget < base + 8 * per_channel) budget = device.shared_opt_in;
    tile = budget > base ? static_cast<int64_t>((budget - base) / per_channel) : 0;
    tile = std::min<int64_t>(tile, std::max(width, 1));
    if (tile >= 8 && tile < width) tile -= tile % 8;  // whole 16-byte chunks of channels per tile
  }
  if (base + per_channel * static_cast<size_t>(tile) > device.shared_opt_in) tile = 0;
  shape.tile_channels = static_cast<int>(tile);
  shared_bytes = AssignLayout(n_rows, shape.positions_per_block, pitch, shape.tile_channels).bytes;
  return shape;
}

// The apply kernel's shape and dynamic shared memory (bytes), for VEC channels per lane; the
// channel_lanes is 0 where even one lane's block does not fit the shared memory.
//   - row lanes: enough for every piece (and every 8 dominant rows, every target) in one pass, a
//     power of two from 32 / channel_lanes up to kApplyMaxThreads / channel_lanes;
//   - channel lanes: 8 (64 to 128 bytes of each row) with 16-byte vectors, 32 with scalars; fewer
//     where a small batch leaves SMs idle (more blocks, each with more row lanes), or where the
//     pieces' partial sums would take more than 48 KiB.
inline ApplyShape apply_shape(int64_t batch, int n_tokens, int k_dom, int k_ctx, int width, int vec,
                              const DeviceLimits& device, const LaunchOverrides& over, size_t& shared_bytes) {
  ApplyShape shape{n_tokens, width, k_dom, k_ctx, 0, 0, 0, 0, plan_slots(n_tokens, k_dom)};
  const int n_merge = k_ctx > 0 ? n_tokens - k_dom - k_ctx : 0;
  shape.max_pieces = k_ctx > 0 ? apply_max_pieces(n_merge, k_ctx) : 0;
  auto bytes = [&](int lanes) {
    return k_ctx > 0 ? ApplyLayout(k_ctx, n_merge, shape.max_pieces, lanes * vec).bytes : size_t{0};
  };
  const int wanted_rows = next_pow2(std::max<int64_t>({32, shape.max_pieces, ceil_div(k_dom, kPieceRows), k_ctx}));
  int lanes = over.channel_lanes;
  if (lanes == 0) {
    lanes = vec > 1 ? 8 : 32;
    const int64_t blocks = batch * ceil_div(width, int64_t{lanes} * vec);
    if (blocks < 2 * int64_t{device.sm_count}) lanes = std::clamp(kApplyMaxThreads / wanted_rows, 1, lanes);
    while (lanes > 1 && bytes(lanes) > 48 * 1024) lanes /= 2;
  }
  if (bytes(lanes) > device.shared_opt_in) lanes = 0;
  shape.channel_lanes = lanes;
  if (lanes == 0) return shape;
  shape.row_lanes = over.row_lanes > 0 ? over.row_lanes
                                       : std::clamp(wanted_rows, std::max(1, 32 / lanes), kApplyMaxThreads / lanes);
  shape.channel_blocks = static_cast<int>(ceil_div(width, int64_t{lanes} * vec));
  shared_bytes = bytes(lanes);
  return shape;
}

// The apply kernel's launch for hidden [B, N, D] at `data` with `sizes` and `strides`, elements of
// `element_bytes`: 16-byte vectors where every row is made of aligned 16-byte chunks and their
// block fits the shared memory, scalars otherwise; channel_lanes is 0 where neither fits.
struct ApplyLaunch {
  int vec;
  ApplyShape shape;
  size_t shared_bytes;
};

inline ApplyLaunch apply_launch(const void* data, const int64_t* sizes, const int64_t* strides, int element_bytes,
                                int k_dom, int k_ctx, const DeviceLimits& device, const LaunchOverrides& over,
                                bool allow_vectors = true) {
  const int vec = 16 / element_bytes;
  const int64_t batch = sizes[0];
  const int n_tokens = static_cast<int>(sizes[1]), width = static_cast<int>(sizes[2]);
  const bool vector_rows = allow_vectors && strides[2] == 1 && width % vec == 0 && aligned16(data) &&
                           stride_multiple(sizes, strides, 0, vec) && stride_multiple(sizes, strides, 1, vec);
  ApplyLaunch launch{vec, {}, 0};
  if (vector_rows) {
    launch.shape = apply_shape(batch, n_tokens, k_dom, k_ctx, width, vec, device, over, launch.shared_bytes);
    if (launch.shape.channel_lanes > 0) return launch;
  }
  launch.vec = 1;
  launch.shape = apply_shape(batch, n_tokens, k_dom, k_ctx, width, 1, device, over, launch.shared_bytes);
  return launch;
}

}  // namespace visionzip::cuda
