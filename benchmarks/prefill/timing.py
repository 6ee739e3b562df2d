"""Latency of a callable on the benchmark device: medians and quantiles, peak memory, CUDA graphs.

On a GPU every repetition starts from an idle device with a cold L2 cache (a 256 MB buffer is
cleared, then the device is synchronised) and is timed with CUDA events, so a stage whose
host-side launches outrun the GPU is charged for them: this is the latency a caller waits for.
On a CPU the host clock is used and there is no memory statistic.

``visionzip_kernels.testing.timing.time_calls`` answers another question (throughput of
back-to-back calls of one kernel, graphs of many calls); here each call is a whole model stage,
timed from an idle device, with its peak memory, a repetition count fitted to its length, and a
capture that may fail. Both summarise their samples into the same ``Timing``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from visionzip_kernels.testing.timing import Timing, summarise

MIB = 1024 * 1024
L2_FLUSH_BYTES = 256 * MIB  # larger than any current GPU's L2 (H100: 50 MB, H200: 60 MB)


@dataclass(frozen=True)
class Memory:
    """Peak bytes allocated during one call, and bytes already allocated before it, in MiB."""

    peak_mib: float
    resident_mib: float


class GraphCaptureError(RuntimeError):
    """A CUDA graph could not capture the callable (the message says why)."""


@dataclass(frozen=True)
class RepetitionPolicy:
    """``warmup`` untimed calls, then enough timed calls to fill ``target_ms`` within the bounds."""

    warmup: int
    min_reps: int
    max_reps: int
    target_ms: float

    def reps_for(self, estimate_ms: float) -> int:
        wanted = math.ceil(self.target_ms / max(estimate_ms, 1e-3))
        return max(self.min_reps, min(self.max_reps, wanted))


GPU_POLICY = RepetitionPolicy(warmup=2, min_reps=10, max_reps=50, target_ms=300.0)
TINY_POLICY = RepetitionPolicy(warmup=1, min_reps=3, max_reps=3, target_ms=0.0)


class Timer:
    """Times callables on ``device`` under ``policy``."""

    def __init__(self, device: torch.device, policy: RepetitionPolicy):
        self.device = device
        self.policy = policy
        self.on_cuda = device.type == "cuda"
        self._flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device) if self.on_cuda else None

    def _once_ms(self, fn: Callable[[], object]) -> float:
        if not self.on_cuda:
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        self._flush.zero_()
        torch.cuda.synchronize(self.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    def time(self, fn: Callable[[], object]) -> Timing:
        """Warm up, then time ``fn`` repeatedly; the repetition count follows the warm-up's time."""
        estimate = min(self._once_ms(fn) for _ in range(self.policy.warmup))
        return summarise([self._once_ms(fn) for _ in range(self.policy.reps_for(estimate))])

    def time_graph(self, fn: Callable[[], object]) -> Timing:
        """Captures ``fn`` in a CUDA graph (after warm-up on a side stream) and times its replay.

        Raises ``GraphCaptureError`` when capture fails; an out-of-memory error propagates as is.
        """
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.policy.warmup):
                fn()
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                static_output = fn()
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as error:  # any failure inside capture means: no graph for this callable
            raise GraphCaptureError(f"{type(error).__name__}: {error}".splitlines()[0][:200]) from error
        try:
            return self.time(graph.replay)
        finally:
            del static_output, graph
            torch.cuda.empty_cache()

    def memory(self, fn: Callable[[], object]) -> Memory | None:
        """Peak allocated memory over one call of ``fn`` (``None`` on a CPU)."""
        if not self.on_cuda:
            return None
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        resident = torch.cuda.memory_allocated(self.device)
        fn()
        torch.cuda.synchronize(self.device)
        return Memory(torch.cuda.max_memory_allocated(self.device) / MIB, resident / MIB)
