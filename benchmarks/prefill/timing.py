"""Latency of callables on the benchmark device, interleaved: peak memory, CUDA graphs, rounds.

On a GPU every repetition starts from an idle device with a cold L2 cache (a 256 MB buffer is
cleared, then the device is synchronised) and is timed with CUDA events, so a stage whose
host-side launches outrun the GPU is charged for them: this is the latency a caller waits for.
On a CPU the host clock is used and there is no memory statistic.

Callables that will be compared are timed **interleaved** (``Timer.interleave``): round after
round, each callable a few times per round, the order rotated from round to round; each gets the
median of its per-round medians and their spread (``summarise_rounds``). Drift of the device or
the host over the run (clocks, temperature, other work) then lands in every callable alike, not
in the ratios between them.

``visionzip_kernels.testing.timing.time_calls`` answers another question (throughput of
back-to-back calls of one kernel, graphs of many calls); here each call is a whole model stage or
a whole ``generate``, timed from an idle device, with its peak memory, a repetition count fitted
to its length, and a capture that may fail. Both summarise into ``Timing``s. Used by
``bench_prefill.py`` and ``bench_generate.py``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from visionzip_kernels.testing.timing import RoundsTiming, summarise_rounds

MIB = 1024 * 1024
L2_FLUSH_BYTES = 256 * MIB  # larger than any current GPU's L2 (H100: 50 MB, H200: 60 MB)


@dataclass(frozen=True)
class Memory:
    """Peak bytes allocated during one call, and bytes already allocated before it, in MiB."""

    peak_mib: float
    resident_mib: float


class GraphCaptureError(RuntimeError):
    """A CUDA graph could not capture the callable (the message says why)."""


@dataclass
class CapturedGraph:
    """A captured callable: calling it replays ``graph``, which rewrites ``static_output`` (kept
    alive here, with the graph's memory pool, until this object is dropped)."""

    graph: torch.cuda.CUDAGraph
    static_output: object

    def __call__(self) -> None:
        self.graph.replay()


@dataclass(frozen=True)
class RepetitionPolicy:
    """``warmup`` untimed calls, then ``rounds`` rounds of timed calls: enough calls in all to fill
    ``target_ms`` within ``[min_reps, max_reps]``, spread evenly over the rounds."""

    warmup: int
    min_reps: int
    max_reps: int
    target_ms: float
    rounds: int

    def reps_per_round(self, estimate_ms: float) -> int:
        wanted = math.ceil(self.target_ms / max(estimate_ms, 1e-3))
        return math.ceil(max(self.min_reps, min(self.max_reps, wanted)) / self.rounds)


GPU_POLICY = RepetitionPolicy(warmup=2, min_reps=10, max_reps=50, target_ms=300.0, rounds=5)
TINY_POLICY = RepetitionPolicy(warmup=1, min_reps=2, max_reps=2, target_ms=0.0, rounds=2)


def timing_fields(timing: RoundsTiming) -> dict:
    """A ``RoundsTiming`` as row fields (ms rounded to 0.1 us)."""
    return {
        "median_ms": round(timing.median_ms, 4), "p20_ms": round(timing.p20_ms, 4),
        "p80_ms": round(timing.p80_ms, 4), "reps": timing.repeats, "rounds": timing.rounds,
        "round_min_ms": round(timing.round_min_ms, 4), "round_max_ms": round(timing.round_max_ms, 4),
    }


class Timer:
    """Times callables on ``device`` under ``policy``."""

    def __init__(self, device: torch.device, policy: RepetitionPolicy):
        self.device = device
        self.policy = policy
        self.on_cuda = device.type == "cuda"
        self._flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device) if self.on_cuda else None

    def once_ms(self, fn: Callable[[], object]) -> float:
        """One call of ``fn`` from an idle device (cold L2 on a GPU), in milliseconds."""
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

    def interleave(self, calls: Sequence[Callable[[], object]]) -> list[RoundsTiming]:
        """Times ``calls`` interleaved (module docstring); one ``RoundsTiming`` per call, in order.

        Each call is warmed up first; its repetitions per round follow the warm-up's time. Round
        ``r`` starts with call ``r mod len(calls)``, so no call always runs right after another.
        """
        policy = self.policy
        reps = [policy.reps_per_round(min(self.once_ms(fn) for _ in range(policy.warmup))) for fn in calls]
        samples = [[[] for _ in range(policy.rounds)] for _ in calls]
        for round_index in range(policy.rounds):
            for offset in range(len(calls)):
                index = (round_index + offset) % len(calls)
                samples[index][round_index] = [self.once_ms(calls[index]) for _ in range(reps[index])]
        return [summarise_rounds(per_round) for per_round in samples]

    def capture_graph(self, fn: Callable[[], object]) -> CapturedGraph:
        """Captures ``fn`` in a CUDA graph (after warm-up on a side stream); calling the result
        replays it. Raises ``GraphCaptureError`` when capture fails; an out-of-memory error
        propagates as is."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.policy.warmup):
                fn()
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                static_output = fn()
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as error:  # any failure inside capture means: no graph for this callable
            raise GraphCaptureError(f"{type(error).__name__}: {error}".splitlines()[0][:200]) from error
        return CapturedGraph(graph, static_output)

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
