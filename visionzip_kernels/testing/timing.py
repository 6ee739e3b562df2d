"""Timing for the benchmarks and the self-check: medians and quantiles of repeated calls.

On a GPU each call is bracketed by CUDA events (device time, launch gaps included) or, with
``graph=True``, a CUDA graph of ``calls_per_graph`` calls is captured and its replays are timed, so
launch overhead is amortised. On the CPU a call is timed with ``time.perf_counter``. Callers pass
several argument sets and the calls rotate through them, so that repeated calls do not all hit
data already in cache.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call: median, 20th and 80th percentiles over ``repeats`` samples."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    repeats: int


def summarise(samples_ms: list[float]) -> Timing:
    """Median and 20th/80th percentiles (linear interpolation) of ``samples_ms``."""
    p20, median, p80 = np.percentile(samples_ms, [20, 50, 80])
    return Timing(float(median), float(p20), float(p80), len(samples_ms))


@dataclass(frozen=True)
class RoundsTiming(Timing):
    """A ``Timing`` over interleaved rounds (each configuration timed once per round, in turn).

    ``median_ms`` is the median of the per-round medians, ``p20_ms``/``p80_ms`` their 20th/80th
    percentiles, ``round_min_ms``/``round_max_ms`` the fastest and slowest round's median;
    ``repeats`` counts every sample.
    """

    rounds: int
    round_min_ms: float
    round_max_ms: float

    @property
    def spread(self) -> float:
        """(slowest round - fastest round) / median: how far apart the rounds' medians lie."""
        return (self.round_max_ms - self.round_min_ms) / self.median_ms


def summarise_rounds(samples_per_round: list[list[float]]) -> RoundsTiming:
    """The median of per-round medians, with its spread, of ``samples_per_round`` (ms)."""
    medians = [float(np.median(samples)) for samples in samples_per_round]
    p20, median, p80 = np.percentile(medians, [20, 50, 80])
    count = sum(len(samples) for samples in samples_per_round)
    return RoundsTiming(
        float(median), float(p20), float(p80), count, len(medians), min(medians), max(medians)
    )


def time_calls(
    fn: Callable[..., object],
    arg_sets: Sequence[tuple],
    device: torch.device,
    *,
    warmup: int = 3,
    repeats: int = 20,
    graph: bool = False,
    calls_per_graph: int = 20,
) -> Timing:
    """Time ``fn(*args)`` rotating through ``arg_sets`` on ``device``."""
    device = torch.device(device)
    for i in range(warmup):
        fn(*arg_sets[i % len(arg_sets)])
    if device.type != "cuda":
        samples = []
        for i in range(repeats):
            start = time.perf_counter()
            fn(*arg_sets[i % len(arg_sets)])
            samples.append((time.perf_counter() - start) * 1e3)
        return summarise(samples)

    torch.cuda.synchronize(device)
    if graph:
        return _time_graph(fn, arg_sets, device, repeats, calls_per_graph)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for i, (start, end) in enumerate(events):
        start.record()
        fn(*arg_sets[i % len(arg_sets)])
        end.record()
    torch.cuda.synchronize(device)
    return summarise([start.elapsed_time(end) for start, end in events])


def _time_graph(fn, arg_sets, device, repeats: int, calls_per_graph: int) -> Timing:
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for i in range(3):
            fn(*arg_sets[i % len(arg_sets)])
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls_per_graph):
            fn(*arg_sets[i % len(arg_sets)])
    graph.replay()
    torch.cuda.synchronize(device)
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize(device)
        samples.append(start.elapsed_time(end) / calls_per_graph)
    return summarise(samples)


def round_medians(fns: Sequence[Callable[[], object]], device: torch.device, rounds: int, calls: int) -> list[list[float]]:
    """``fns`` timed interleaved: in each of ``rounds`` rounds every function is timed in turn,
    ``calls`` calls each, so that all of them meet the same machine state. Per function, the
    rounds' median milliseconds per call."""
    medians: list[list[float]] = [[] for _ in fns]
    for round_index in range(rounds):
        for fn, per_round in zip(fns, medians):
            timing = time_calls(fn, [()], device, warmup=1 if round_index == 0 else 0, repeats=calls)
            per_round.append(timing.median_ms)
    return medians


MAX_RATIO_SPREAD = 1.5  # a ratio whose p80 is more than 1.5x its p20 across rounds is not read


@dataclass(frozen=True)
class Ratio:
    """``baseline / candidate`` per round: the median and 20th/80th percentiles over ``rounds``."""

    median: float
    p20: float
    p80: float
    rounds: int

    @property
    def readable(self) -> bool:
        """Whether the rounds agree well enough to read the ratio: p80 <= ``MAX_RATIO_SPREAD`` x p20."""
        return self.p80 <= MAX_RATIO_SPREAD * self.p20


def ratio_per_round(baseline_ms: Sequence[float], candidate_ms: Sequence[float]) -> Ratio:
    """The ratio of two functions' per-round times (``round_medians``), taken round by round."""
    ratios = [baseline / candidate for baseline, candidate in zip(baseline_ms, candidate_ms, strict=True)]
    p20, median, p80 = np.percentile(ratios, [20, 50, 80])
    return Ratio(float(median), float(p20), float(p80), len(ratios))


def copy_bandwidth_gbps(device: torch.device, n_bytes: int = 1 << 30) -> float:
    """Measured device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written."""
    src = torch.empty(n_bytes // 2, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    timing = time_calls(dst.copy_, [(src,)], device, repeats=10)
    return 2 * src.numel() / (timing.median_ms * 1e-3) / 1e9


def sets_to_exceed_cache(bytes_per_set: int, cache_bytes: int = 64 << 20, most: int = 64) -> int:
    """How many distinct argument sets to rotate through so that together they outgrow the caches."""
    return max(1, min(most, -(-2 * cache_bytes // max(1, bytes_per_set))))
