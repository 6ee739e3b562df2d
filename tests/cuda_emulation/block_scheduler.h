// Runs a CUDA kernel's blocks on the CPU so that a missing barrier, a divergent warp operation or an
// unwritten shared-memory read fails every time rather than by chance (used by
// device_primitives_host.h, which defines the CUDA built-ins on top of it):
//
// - Every thread of a block is a fiber (ucontext) of one OS thread; exactly one runs at a time, up
//   to its next __syncthreads, __syncwarp or warp operation, and the next one to run is drawn at
//   random. So each run is one deterministic interleaving, and a seed (EMULATION_SEED, default 1)
//   picks which: a thread that reads what another writes without a barrier between them reads it
//   before the write in some orders, and a thread overwrites a buffer others still read in others.
// - The blocks of a grid run one after another, in an order drawn from the same seed.
// - Each block runs on a fresh OS thread whose static shared memory (`__shared__` arrays, made
//   thread_local) and dynamic shared memory start as 0xff bytes (NaN in float32, bfloat16 and
//   float16; -1 as an integer).
// - A warp operation (shuffle, match, __syncwarp, the tensor-core product) completes when every
//   lane of its mask has arrived at the same operation with the same mask. A lane outside the
//   block, a lane of the mask that has exited (except for __syncwarp, as on the GPU), a lane not in
//   its own mask, or lanes of one mask waiting at different operations are errors; so is a block
//   in which no thread can run (a deadlock): the run ends with a message naming every waiting
//   thread and its source line, not a hang.
// - Under ThreadSanitizer the fibers are its threads, and only __syncthreads and __syncwarp order
//   their memory accesses (as on the GPU: shuffles and match exchange values, not memory), so a
//   missing barrier is reported even in an order where the values come out right.
#pragma once

#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <functional>
#include <memory>
#include <random>
#include <source_location>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__SANITIZE_THREAD__)
#define EMULATION_TSAN 1
#include <sanitizer/tsan_interface.h>
extern "C" void __tsan_ignore_thread_begin();  // in the runtime, not in every version of the header
extern "C" void __tsan_ignore_thread_end();
#endif
#if defined(__SANITIZE_ADDRESS__)
#define EMULATION_ASAN 1
#include <sanitizer/common_interface_defs.h>
#endif

#include <link.h>

namespace emulation {

struct Index3 {
  unsigned int x, y, z;
};

enum class WarpOp { kSyncwarp, kShuffle, kMatch, kMma };

inline const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::kSyncwarp:
      return "__syncwarp";
    case WarpOp::kShuffle:
      return "a warp shuffle";
    case WarpOp::kMatch:
      return "__match_any_sync";
    default:
      return "mma_16x8x16";
  }
}

struct PendingCopy {
  void* dst;
  const void* src;
  int src_bytes, bytes;
};

enum class Wait { kReady, kBlockBarrier, kWarp, kDone };

struct Fiber;
using Resolve = void (*)(Fiber* const (&lanes)[32], unsigned int mask);

// One CUDA thread: its context and stack, what it waits for, and the values it exchanges with its
// warp. Only the harness reads and writes the fields below `block`; the kernel sees them through
// device_primitives_host.h.
struct Fiber {
  ucontext_t context;
  void* stack = nullptr;
  Index3 thread{0, 0, 0}, block{0, 0, 0}, block_dim{0, 0, 0};
  std::vector<std::vector<PendingCopy>> groups{{}};  // cp.async groups; the last one is still open
  Wait wait = Wait::kReady;
  WarpOp op = WarpOp::kSyncwarp;
  unsigned int mask = 0;
  std::source_location where;
  int source_lane = 0;                // shuffles: the lane whose value this lane receives
  int64_t word_in = 0, word_out = 0;  // shuffles and match
  uint32_t a[4] = {}, b[2] = {};      // tensor-core product: fragments
  float acc[4] = {};                  //   and accumulators, in and out
  Resolve resolve = nullptr;
  std::exception_ptr error;
#if EMULATION_TSAN
  void* tsan_fiber = nullptr;
#endif
};

// Memory the sanitizers should not check: the harness's own bookkeeping, which the fibers and the
// scheduler hand to each other without synchronisation (one runs at a time).
struct HarnessAccess {
#if EMULATION_TSAN
  HarnessAccess() { __tsan_ignore_thread_begin(); }
  ~HarnessAccess() { __tsan_ignore_thread_end(); }
#else
  HarnessAccess() {}  // user-provided: a guard, not an unused variable
#endif
};

inline uint64_t seed_from_environment() {
  const char* text = std::getenv("EMULATION_SEED");
  return text ? std::stoull(text) : 1;
}

inline std::string describe(const Fiber& f) {
  std::string text = "thread " + std::to_string(f.thread.x) + " of block (" + std::to_string(f.block.x) + ", " +
                     std::to_string(f.block.y) + ")";
  if (f.wait == Wait::kBlockBarrier) return text + " waits at __syncthreads() (" + f.where.file_name() + ":" +
                                            std::to_string(f.where.line()) + ")";
  if (f.wait == Wait::kWarp) {
    char mask[16];
    std::snprintf(mask, sizeof mask, "0x%08x", f.mask);
    return text + " waits at " + op_name(f.op) + " with mask " + mask + " (" + f.where.file_name() + ":" +
           std::to_string(f.where.line()) + ")";
  }
  return text + (f.wait == Wait::kDone ? " has exited" : " can run");
}

// The running block: its fibers, the scheduler's context and its random order.
class BlockRun {
 public:
  static constexpr size_t kStackBytes = 256 * 1024;

  BlockRun(const std::function<void()>& kernel, Index3 block, int threads, unsigned char* dynamic_shared,
           uint64_t seed)
      : kernel_(kernel),
        fibers_(static_cast<size_t>(threads)),
        random_(seed),
        dynamic_shared_(dynamic_shared),
        generations_(1 + (static_cast<size_t>(threads) + 31) / 32, 0),
        order_objects_(generations_.size()) {
    running() = this;  // before the fibers exist: ThreadSanitizer orders it before their reads
    for (int t = 0; t < threads; ++t) {
      Fiber& f = fibers_[static_cast<size_t>(t)];
      f.thread = {static_cast<unsigned>(t), 0, 0};
      f.block = block;
      f.block_dim = {static_cast<unsigned>(threads), 1, 1};
      f.stack = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (f.stack == MAP_FAILED) throw std::runtime_error("emulation: no memory for a thread's stack");
      mprotect(f.stack, 4096, PROT_NONE);  // a stack overflow faults instead of corrupting a neighbour
      getcontext(&f.context);
      f.context.uc_stack.ss_sp = f.stack;
      f.context.uc_stack.ss_size = kStackBytes;
      f.context.uc_link = nullptr;
      makecontext(&f.context, &BlockRun::start, 0);
#if EMULATION_TSAN
      f.tsan_fiber = __tsan_create_fiber(0);
#endif
    }
  }

  ~BlockRun() {
    for (Fiber& f : fibers_) {
#if EMULATION_TSAN
      __tsan_destroy_fiber(f.tsan_fiber);
#endif
      munmap(f.stack, kStackBytes);
    }
  }

  // Runs every thread to its end, one at a time; throws what a thread threw, or a deadlock.
  void run() {
    std::vector<int> ready(fibers_.size());
    for (size_t t = 0; t < ready.size(); ++t) ready[t] = static_cast<int>(t);
    live_ = static_cast<int>(fibers_.size());
    while (!ready.empty()) {
      const size_t pick = std::uniform_int_distribution<size_t>(0, ready.size() - 1)(random_);
      Fiber& f = fibers_[static_cast<size_t>(ready[pick])];
      ready[pick] = ready.back();
      ready.pop_back();
      switch_to(f);
      if (f.error) std::rethrow_exception(f.error);
      settle(f, ready);
    }
    if (live_ > 0) {
      std::string text = "emulation: deadlock, no thread can run:";
      for (const Fiber& f : fibers_) {
        if (f.wait != Wait::kDone) text += "\n  " + describe(f);
      }
      throw std::runtime_error(text);
    }
  }

  Fiber& current() { return *current_; }
  unsigned char* dynamic_shared() { return dynamic_shared_; }

  // The running thread arrives at __syncthreads (warp < 0) or at a warp operation of warp `warp`;
  // returns the object whose release by the arrivals and acquire by the departures orders memory
  // under ThreadSanitizer. Two objects alternate, so that a thread already past the next barrier
  // gives nothing to one still leaving this one.
  char* arrive(Wait wait, std::source_location where) {
    HarnessAccess access;
    Fiber& f = *current_;
    f.wait = wait;
    f.where = where;
    const size_t order = wait == Wait::kBlockBarrier ? 0 : 1 + f.thread.x / 32;
    return &order_objects_[order][generations_[order] % 2];
  }

  // Called by the running fiber: wait as `current().wait` says, until the scheduler resumes it.
  void yield(bool final = false) {
    ucontext_t* context;
    [[maybe_unused]] void* scheduler_tsan;
    {
      HarnessAccess access;
      context = &current_->context;
#if EMULATION_TSAN
      scheduler_tsan = scheduler_tsan_;
#endif
    }
#if EMULATION_ASAN
    __sanitizer_start_switch_fiber(final ? nullptr : &fake_stack_, scheduler_stack_bottom_, scheduler_stack_size_);
#endif
#if EMULATION_TSAN
    // The last switch of a thread orders its accesses before the next block's (or launch's).
    __tsan_switch_to_fiber(scheduler_tsan, final ? 0 : __tsan_switch_to_fiber_no_sync);
#endif
    swapcontext(context, &scheduler_context_);
#if EMULATION_ASAN
    __sanitizer_finish_switch_fiber(fake_stack_, nullptr, nullptr);
#endif
  }

  static BlockRun*& running() {
    static thread_local BlockRun* run = nullptr;
    return run;
  }

 private:
  static void start() {
    BlockRun& run = *running();
#if EMULATION_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &run.scheduler_stack_bottom_, &run.scheduler_stack_size_);
#endif
    Fiber* f;
    {
      HarnessAccess access;
      f = run.current_;
    }
    try {
      run.kernel_();
    } catch (...) {
      HarnessAccess access;
      f->error = std::current_exception();
    }
    {
      HarnessAccess access;
      f->wait = Wait::kDone;
    }
    run.yield(true);
  }

  void switch_to(Fiber& f) {
    current_ = &f;
#if EMULATION_TSAN
    scheduler_tsan_ = __tsan_get_current_fiber();
    __tsan_switch_to_fiber(f.tsan_fiber, __tsan_switch_to_fiber_no_sync);
#endif
#if EMULATION_ASAN
    void* fake_stack = nullptr;
    __sanitizer_start_switch_fiber(&fake_stack, static_cast<char*>(f.stack) + 4096, kStackBytes - 4096);
#endif
    swapcontext(&scheduler_context_, &f.context);
#if EMULATION_ASAN
    __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
  }

  Fiber* lane_fiber(const Fiber& f, int lane) {
    const size_t t = (f.thread.x & ~31u) + static_cast<unsigned>(lane);
    return t < fibers_.size() ? &fibers_[t] : nullptr;
  }

  [[noreturn]] static void fail(const std::string& what, const Fiber& f) {
    throw std::runtime_error("emulation: " + what + ": " + describe(f));
  }

  // The lanes of f's warp that wait at a warp operation whose mask names f.
  std::vector<Fiber*> waiting_for(const Fiber& f) {
    std::vector<Fiber*> lanes;
    for (int lane = 0; lane < 32; ++lane) {
      Fiber* other = lane_fiber(f, lane);
      if (other && other->wait == Wait::kWarp && (other->mask >> (f.thread.x & 31) & 1u)) lanes.push_back(other);
    }
    return lanes;
  }

  // After `f` stopped: release the threads its arrival (or exit) completes.
  void settle(Fiber& f, std::vector<int>& ready) {
    if (f.wait == Wait::kDone) {
      --live_;
      for (Fiber* other : waiting_for(f)) {
        if (other->op != WarpOp::kSyncwarp) fail("a lane of the mask has exited", *other);
        if (other->wait == Wait::kWarp) try_complete_warp(*other, ready);  // unless an earlier one did
      }
    } else if (f.wait == Wait::kBlockBarrier) {
      for (Fiber* other : waiting_for(f)) fail("a lane of the mask waits at __syncthreads() instead", *other);
      ++at_barrier_;
    } else {
      try_complete_warp(f, ready);  // a fiber stops only to wait or at its end
    }
    if (at_barrier_ > 0 && at_barrier_ == live_) {
      at_barrier_ = 0;
      ++generations_[0];
      for (Fiber& other : fibers_) {
        if (other.wait == Wait::kBlockBarrier) {
          other.wait = Wait::kReady;
          ready.push_back(static_cast<int>(other.thread.x));
        }
      }
    }
  }

  void try_complete_warp(Fiber& f, std::vector<int>& ready) {
    const int me = static_cast<int>(f.thread.x & 31);
    if (!(f.mask >> me & 1u)) fail("a lane not in its own mask", f);
    Fiber* lanes[32] = {};
    for (int lane = 0; lane < 32; ++lane) {
      if (!(f.mask >> lane & 1u)) continue;
      Fiber* other = lane_fiber(f, lane);
      if (!other) fail("a mask naming lanes beyond the block's threads", f);
      if (other->wait == Wait::kDone) {
        if (f.op != WarpOp::kSyncwarp) fail("a lane of the mask has exited", f);
        continue;
      }
      if (other->wait == Wait::kBlockBarrier) fail("a lane of the mask waits at __syncthreads() instead", f);
      if (other->wait == Wait::kWarp && (other->op != f.op || other->mask != f.mask)) {
        fail("lanes of one mask at different warp operations (the other: " + describe(*other) + ")", f);
      }
      if (other->wait != Wait::kWarp) return;  // still running towards it
      lanes[lane] = other;
    }
    if (f.resolve) f.resolve(lanes, f.mask);
    ++generations_[1 + f.thread.x / 32];
    for (Fiber* lane : lanes) {
      if (lane) {
        lane->wait = Wait::kReady;
        ready.push_back(static_cast<int>(lane->thread.x));
      }
    }
  }

  const std::function<void()>& kernel_;
  std::vector<Fiber> fibers_;
  std::mt19937_64 random_;
  Fiber* current_ = nullptr;
  ucontext_t scheduler_context_;
  int live_ = 0, at_barrier_ = 0;
  unsigned char* dynamic_shared_;
  std::vector<unsigned> generations_;        // completed barriers: the block's, then each warp's
  std::vector<std::array<char, 2>> order_objects_;
#if EMULATION_TSAN
  void* scheduler_tsan_ = nullptr;
#endif
#if EMULATION_ASAN
  void* fake_stack_ = nullptr;
  const void* scheduler_stack_bottom_ = nullptr;
  size_t scheduler_stack_size_ = 0;
#endif
};

inline Fiber& current() {
  HarnessAccess access;
  return BlockRun::running()->current();
}

// Sets every byte of this OS thread's copy of the program's thread_local variables (among them the
// kernels' `__shared__` arrays) to 0xff. x86-64 keeps the program's own block just below the
// thread pointer.
inline thread_local unsigned char tls_marker = 0;

inline void poison_static_shared() {
  struct Segment {
    size_t size = 0, align = 1;
  } tls;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* out) {
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          if (info->dlpi_phdr[i].p_type == PT_TLS) {
            *static_cast<Segment*>(out) = {info->dlpi_phdr[i].p_memsz, info->dlpi_phdr[i].p_align};
          }
        }
        return 1;  // the program itself is the first object
      },
      &tls);
  auto* thread_pointer = static_cast<unsigned char*>(__builtin_thread_pointer());
  unsigned char* begin = thread_pointer - (tls.size + tls.align - 1) / tls.align * tls.align;
  if (&tls_marker < begin || &tls_marker >= thread_pointer) {
    throw std::runtime_error("emulation: cannot find the program's thread_local block to poison");
  }
  volatile unsigned char* byte = begin;  // not memset: no sanitizer check of the harness's own fill
  for (; byte < thread_pointer; ++byte) *byte = 0xff;
}

// Runs `kernel()` as every thread of every block of `grid`, the blocks in an order drawn from
// EMULATION_SEED (and the launch's number), each with `shared_bytes` at `dynamic_shared` as its
// dynamic shared memory: both kinds of shared memory poisoned at every block's start.
inline void launch_blocks(Index3 grid, int threads, unsigned char* dynamic_shared, size_t shared_bytes,
                          const std::function<void()>& kernel) {
  static uint64_t launches = 0;
  std::mt19937_64 random(seed_from_environment() * 0x9e3779b97f4a7c15ull + launches++);
  std::vector<Index3> blocks;
  for (unsigned by = 0; by < grid.y; ++by) {
    for (unsigned bx = 0; bx < grid.x; ++bx) blocks.push_back({bx, by, 0});
  }
  std::shuffle(blocks.begin(), blocks.end(), random);
  for (const Index3& block : blocks) {
    std::exception_ptr error;
    const uint64_t block_seed = random();
    std::thread worker([&] {
      try {
        poison_static_shared();
        std::fill(dynamic_shared, dynamic_shared + shared_bytes, 0xff);
        BlockRun run(kernel, block, threads, dynamic_shared, block_seed);
        run.run();
      } catch (...) {
        error = std::current_exception();
      }
    });
    worker.join();
    if (error) std::rethrow_exception(error);
  }
}

}  // namespace emulation
