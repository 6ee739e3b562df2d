// Small kernels with one planted mistake each (or none), for tests/test_emulation_harness.py: what
// device_primitives_host.h must report, and what it must not.
//
//   run_harness_checks SCENARIO
//
// Prints the kernel's results (one line); a mistake the harness catches ends the run with its
// message on stderr and exit status 1 (or a sanitizer's report and its status).
#include "device_primitives_host.h"

#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace {

using emulation::launch;

std::vector<int> results(64, 0);

// Thread 0 writes a shared value that thread 1 reads: with a barrier between, or not.
template <bool kBarrier>
void write_then_read() {
  __shared__ int value;
  if (threadIdx.x == 0) value = 7;
  if (kBarrier) __syncthreads();
  if (threadIdx.x == 1) results[0] = value;
}

// Lane 0 writes a shared value that lane 1 reads after a shuffle (which does not order memory on
// the GPU) or after __syncwarp (which does).
template <bool kSyncwarp>
void write_shuffle_read() {
  __shared__ int value;
  if (threadIdx.x == 0) value = 7;
  if (kSyncwarp) {
    __syncwarp();
  } else {
    __shfl_xor_sync(0xffffffffu, 1.0f, 1);
  }
  if (threadIdx.x == 1) results[0] = value;
}

const std::map<std::string, void (*)()> kScenarios = {
    {"race", [] { launch({1, 1, 1}, 64, 0, write_then_read<false>); }},
    {"no_race", [] { launch({1, 1, 1}, 64, 0, write_then_read<true>); }},
    {"shuffle_race", [] { launch({1, 1, 1}, 32, 0, write_shuffle_read<false>); }},
    {"syncwarp", [] { launch({1, 1, 1}, 32, 0, write_shuffle_read<true>); }},
    // Half a warp shuffles with the full mask, the other half goes on to __syncthreads.
    {"divergent_shuffle",
     [] {
       launch({1, 1, 1}, 32, 0, [] {
         if (threadIdx.x < 16) __shfl_xor_sync(0xffffffffu, 1.0f, 1);
         __syncthreads();
       });
     }},
    // Half a warp exits while the other half shuffles with the full mask.
    {"exited_lane",
     [] {
       launch({1, 1, 1}, 32, 0, [] {
         if (threadIdx.x < 16) __shfl_xor_sync(0xffffffffu, 1.0f, 1);
       });
     }},
    {"mask_without_self", [] { launch({1, 1, 1}, 32, 0, [] { __shfl_xor_sync(0x1u, 1.0f, 1); }); }},
    // Each block reads its static and dynamic shared memory before writing it: the poison, every block.
    {"shared_poison",
     [] {
       launch({4, 1, 1}, 32, 8, [] {
         __shared__ int value;
         auto* dynamic = reinterpret_cast<int*>(visionzip::cuda::dynamic_shared_bytes());
         if (threadIdx.x == 0) {
           results[2 * blockIdx.x] = value;
           results[2 * blockIdx.x + 1] = dynamic[1];
           value = 5;
           dynamic[1] = 5;
         }
       });
     }},
    // The order the blocks ran in.
    {"block_order",
     [] {
       static int position = 0;
       launch({8, 1, 1}, 1, 0, [] { results[position++] = static_cast<int>(blockIdx.x); });
     }},
    // One int past the end of 8 bytes of dynamic shared memory.
    {"shared_overflow",
     [] {
       launch({1, 1, 1}, 1, 8, [] {
         results[0] = reinterpret_cast<volatile int*>(visionzip::cuda::dynamic_shared_bytes())[2];
       });
     }},
};

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc != 2 || !kScenarios.count(argv[1])) throw std::runtime_error("usage: run_harness_checks SCENARIO");
    kScenarios.at(argv[1])();
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s\n", error.what());
    return 1;
  }
  for (size_t i = 0; i < 8; ++i) std::printf("%d ", results[i]);
  std::printf("\n");
  return 0;
}
