// Device code of the CUDA C++ backend of visionzip::zip_tokens, last step: zip_apply_kernel writes
// the tokens from `hidden` and the plan of zip_tokens_cuda.cuh. Launched by csrc/zip_tokens_cuda.cu.
#pragma once

#include "zip_tokens_cuda.cuh"

namespace visionzip::cuda {

// Rows per piece of a group's sum (see zip_apply_kernel): a piece's rows are loaded together, so
// 8 rows x 16 bytes are in flight per thread.
constexpr int kPieceRows = 8;
// At most 256 threads and (launch bounds) 128 registers per thread: two blocks per SM, so that one
// block's group-building step, which loads no rows, overlaps the other's streaming.
constexpr int kApplyMaxThreads = 256;

struct ApplyShape {
  int n_tokens, width, k_dom, k_ctx;
  int channel_lanes, row_lanes;  // threads = channel_lanes x row_lanes
  int channel_blocks;            // blocks per image: channel_lanes * VEC channels each
  int max_pieces;                // an upper bound of the pieces of an image, see apply_max_pieces
  int64_t plan_stride;
};

struct HiddenInput {
  int64_t stride_b, stride_n, stride_d;
};

// At most floor(n_merge / kPieceRows) + k_ctx pieces: a group of c rows has ceil(c / kPieceRows).
__host__ __device__ constexpr int apply_max_pieces(int n_merge, int k_ctx) {
  return n_merge / kPieceRows + k_ctx < n_merge ? n_merge / kPieceRows + k_ctx : n_merge;
}

// Byte offsets of the apply kernel's dynamic shared memory (k_ctx > 0), alike on host and device.
struct ApplyLayout {
  size_t scratch, slot_target, slot_token, count, group_start, first_piece, cursor, members, partial, bytes;
  __host__ __device__ ApplyLayout(int k_ctx, int n_merge, int max_pieces, int block_channels) {
    const size_t targets = static_cast<size_t>(k_ctx), n_rem = static_cast<size_t>(k_ctx + n_merge);
    scratch = 0;                                    // int [32]: block scan
    slot_target = scratch + 4 * 32;                 // int [M]: the plan's target of each remaining position
    slot_token = slot_target + 4 * n_rem;           // int [M]: the plan's token of each remaining position
    count = slot_token + 4 * n_rem;                 // int [k_ctx]: merge rows of each target
    group_start = count + 4 * targets;              // int [k_ctx]: its first entry in `members`
    first_piece = group_start + 4 * targets;        // int [k_ctx + 1]: its first piece; [k_ctx] = pieces
    cursor = first_piece + 4 * (targets + 1);       // int [k_ctx]: next free entry while placing
    members = cursor + 4 * targets;                 // int [n_merge]: merge tokens grouped by target
    partial = align16(members + 4 * static_cast<size_t>(n_merge));  // float [max_pieces][block_channels]
    bytes = partial + 4 * static_cast<size_t>(max_pieces) * block_channels;
  }
};

// Apply kernel: block = (image b, block of channel_lanes * VEC channels); thread = (channel lane,
// row lane), channel_lanes x row_lanes threads. Reads hidden [B, N, D] (any batch and token strides;
// VEC > 1 needs unit channel stride and 16-byte alignment) and the plan (plan_slots); writes
// tokens[b] (contiguous [B, k_dom + k_ctx, D]) for the block's channels:
//
//   dominant row i:     hidden[plan[i]], copied bit for bit;
//   contextual row t:   float(hidden[target_t]) + sum_t / count_t, rounded once to T, where sum_t
//                       is the float32 sum of the rows of the count_t merge tokens assigned to t
//                       (hidden[target_t] alone where count_t = 0).
//
// Steps (2 and 3 end at a __syncthreads()):
//   1. Copy the dominant rows: row lane l takes rows l, l + row_lanes, ..., kPieceRows of them
//      loaded together.
//   2. Group the merge tokens by target (every block of the image does this itself, from the
//      plan's assignments, so that blocks need nothing from each other): copy the plan's remaining
//      tokens and their targets to shared memory, count each target's rows (integer atomics, one per
//      warp and target: the counts do not depend on their order); one block scan of the packed
//      pair (count_t, pieces_t = ceil(count_t / kPieceRows)) gives each group its first entry and
//      its first piece; then one warp places the merge tokens, 32 remaining positions at a time in
//      index order, each at its group's cursor plus its rank among the lanes with the same target
//      (__match_any_sync), so every group lists its tokens in index order.
//   3. Sum pieces: the rows of group t are cut into pieces of kPieceRows consecutive entries; a row
//      lane sums one piece's rows in order into partial[piece] (float32, in shared memory). With
//      count = {19, 0, 5}, for example, group 0 has pieces 0-2 (8 + 8 + 3 rows), group 1 none and
//      group 2 piece 3 (5 rows): first_piece = {0, 3, 3, 4}.
//   4. Finish groups: row lane l takes targets l, l + row_lanes, ...: sum_t is the fold of its
//      pieces' partials in piece order, ((p0 + p1) + p2) + ..., and the row is written.
// So sum_t has one fixed evaluation order, set by the plan alone: neither the block shape nor the
// number of blocks changes a bit of the output (the contract leaves the order free; the tests hold
// the kernel to this). No atomics on values.
template <typename T, int VEC>
__global__ void __launch_bounds__(kApplyMaxThreads, 2)
    zip_apply_kernel(const T* hidden_data, HiddenInput hidden, ApplyShape shape, const int32_t* plan, T* tokens) {
  using Vec = Pack<T, VEC>;
  unsigned char* smem = dynamic_shared_bytes();
  const int lanes_c = shape.channel_lanes, row_lanes = shape.row_lanes;
  const int block_channels = lanes_c * VEC;
  const int lane_c = threadIdx.x % lanes_c, lane_r = threadIdx.x / lanes_c;
  const int64_t b = blockIdx.x / shape.channel_blocks;
  const int channel = static_cast<int>(blockIdx.x % shape.channel_blocks) * block_channels + lane_c * VEC;
  const bool in_range = channel < shape.width;
  const T* src = hidden_data + b * hidden.stride_b + (in_range ? channel : 0) * hidden.stride_d;
  T* dst = tokens + b * (shape.k_dom + shape.k_ctx) * static_cast<int64_t>(shape.width) + (in_range ? channel : 0);
  const int32_t* image_plan = plan + b * shape.plan_stride;
  auto load = [&](int token) { return load_vector(reinterpret_cast<const Vec*>(src + token * hidden.stride_n)); };
  auto store = [&](int row, const Vec& value) {
    store_vector(reinterpret_cast<Vec*>(dst + row * static_cast<int64_t>(shape.width)), value);
  };

  // 1. Dominant rows.
  for (int i = lane_r; i < shape.k_dom; i += kPieceRows * row_lanes) {
    Vec row[kPieceRows];
#pragma unroll
    for (int u = 0; u < kPieceRows; ++u) {
      if (i + u * row_lanes < shape.k_dom && in_range) row[u] = load(image_plan[i + u * row_lanes]);
    }
#pragma unroll
    for (int u = 0; u < kPieceRows; ++u) {
      if (i + u * row_lanes < shape.k_dom && in_range) store(i + u * row_lanes, row[u]);
    }
  }
  const int n_targets = shape.k_ctx;
  if (n_targets == 0) return;

  // 2. Group the merge tokens by target.
  const int n_rem = shape.n_tokens - shape.k_dom;
  const int n_merge = n_rem - n_targets;
  const ApplyLayout layout(n_targets, n_merge, shape.max_pieces, block_channels);
  auto* count = reinterpret_cast<int*>(smem + layout.count);
  auto* group_start = reinterpret_cast<int*>(smem + layout.group_start);
  auto* first_piece = reinterpret_cast<int*>(smem + layout.first_piece);
  auto* cursor = reinterpret_cast<int*>(smem + layout.cursor);
  auto* members = reinterpret_cast<int*>(smem + layout.members);
  auto* partial = reinterpret_cast<float*>(smem + layout.partial);
  auto* scratch = reinterpret_cast<int*>(smem + layout.scratch);
  auto* slot_target = reinterpret_cast<int*>(smem + layout.slot_target);
  auto* slot_token = reinterpret_cast<int*>(smem + layout.slot_token);
  const int32_t* rem_tok = image_plan + shape.k_dom;
  const int32_t* assigned = image_plan + shape.n_tokens;
  const int step = max(1, n_rem / n_targets);

  for (int t = threadIdx.x; t < n_targets; t += blockDim.x) count[t] = 0;
  __syncthreads();
  const int lane = threadIdx.x & 31;
  for (int r = threadIdx.x; r - lane < n_rem; r += blockDim.x) {  // whole warps: r - lane is warp-uniform
    const int t = r < n_rem ? assigned[r] : -1;
    if (r < n_rem) {
      slot_target[r] = t;
      slot_token[r] = rem_tok[r];
    }
    const unsigned peers = __match_any_sync(0xffffffffu, t);
    if (t >= 0 && lane == __ffs(peers) - 1) atomicAdd(&count[t], __popc(peers));
  }
  __syncthreads();
  // Each thread takes a run of consecutive targets. Packed pair: rows in the low 16 bits, pieces in
  // the high bits (both totals are at most kMaxTokens < 2^15).
  const int targets_per_thread = (n_targets + blockDim.x - 1) / blockDim.x;
  const int first_target = threadIdx.x * targets_per_thread;
  const int last_target = min(n_targets, first_target + targets_per_thread);
  int thread_pair = 0;
  for (int t = first_target; t < last_target; ++t) {
    thread_pair += count[t] + (((count[t] + kPieceRows - 1) / kPieceRows) << 16);
  }
  int pair_before = block_exclusive_sum(thread_pair, scratch);
  for (int t = first_target; t < last_target; ++t) {
    group_start[t] = pair_before & 0xFFFF;
    first_piece[t] = pair_before >> 16;
    pair_before += count[t] + (((count[t] + kPieceRows - 1) / kPieceRows) << 16);
    if (t == n_targets - 1) first_piece[n_targets] = pair_before >> 16;
  }
  __syncthreads();
  for (int t = threadIdx.x; t < n_targets; t += blockDim.x) cursor[t] = group_start[t];
  __syncthreads();
  if (threadIdx.x < 32) {
    for (int base = 0; base < n_rem; base += 32) {
      const int r = base + lane;
      const int t = r < n_rem ? slot_target[r] : -1;
      const unsigned peers = __match_any_sync(0xffffffffu, t);
      if (t >= 0) members[cursor[t] + __popc(peers & ((1u << lane) - 1u))] = slot_token[r];
      __syncwarp();
      if (t >= 0 && lane == __ffs(peers) - 1) cursor[t] += __popc(peers);
      __syncwarp();
    }
  }
  __syncthreads();

  // 3. Pieces: piece p of group t (first_piece[t] <= p < first_piece[t + 1]) sums its rows in order.
  const int n_pieces = first_piece[n_targets];
  for (int p = lane_r; p < n_pieces; p += row_lanes) {
    int lo = 0, hi = n_targets - 1;  // the last target whose first piece is <= p
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (first_piece[mid] <= p) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    const int t = lo, k = p - first_piece[t];
    const int begin = group_start[t] + k * kPieceRows;
    const int n_rows = min(kPieceRows, count[t] - k * kPieceRows);
    Vec row[kPieceRows];
#pragma unroll
    for (int u = 0; u < kPieceRows; ++u) {
      if (u < n_rows && in_range) row[u] = load(members[begin + u]);
    }
    float acc[VEC] = {};
#pragma unroll
    for (int u = 0; u < kPieceRows; ++u) {
      if (u < n_rows) {
#pragma unroll
        for (int v = 0; v < VEC; ++v) acc[v] = __fadd_rn(acc[v], to_float(row[u].v[v]));
      }
    }
#pragma unroll
    for (int v = 0; v < VEC; ++v) partial[p * block_channels + lane_c * VEC + v] = acc[v];
  }
  __syncthreads();

  // 4. Groups: fold the pieces' partials in piece order, add the mean to the target's row.
  if (!in_range) return;
  for (int t = lane_r; t < n_targets; t += row_lanes) {
    const Vec target = load(slot_token[t * step]);  // target t is remaining position t * step
    float sum[VEC] = {};
    for (int p = first_piece[t]; p < first_piece[t + 1]; ++p) {
#pragma unroll
      for (int v = 0; v < VEC; ++v) sum[v] = __fadd_rn(sum[v], partial[p * block_channels + lane_c * VEC + v]);
    }
    const int rows = count[t];
    Vec out;
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const float mean = rows > 0 ? __fdiv_rn(sum[v], static_cast<float>(rows)) : 0.f;
      out.v[v] = from_float<T>(__fadd_rn(to_float(target.v[v]), mean));
    }
    store(shape.k_dom + t, out);
  }
}

}  // namespace visionzip::cuda
