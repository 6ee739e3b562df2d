"""Interleaved timing, shared by the end-to-end benchmarks: ``summarise_rounds`` and
``Timer.interleave`` (``benchmarks/prefill/timing.py``), on the CPU. No timing is asserted: the
order of the calls and the arithmetic of the summary are."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from prefill.timing import RepetitionPolicy, Timer  # noqa: E402
from visionzip_kernels.testing.timing import summarise_rounds  # noqa: E402


def test_summary_is_the_median_of_per_round_medians():
    timing = summarise_rounds([[1.0, 9.0, 2.0], [4.0, 4.0], [3.0, 100.0, 3.0, 3.0], [8.0], [6.0]])
    assert timing.rounds == 5 and timing.repeats == 11
    assert timing.median_ms == 4.0  # round medians 2, 4, 3, 8, 6
    assert (timing.round_min_ms, timing.round_max_ms) == (2.0, 8.0)
    assert timing.p20_ms == pytest.approx(2.8) and timing.p80_ms == pytest.approx(6.4)
    assert timing.spread == pytest.approx(1.5)


def test_calls_are_timed_round_after_round_in_rotated_order():
    order = []
    calls = [lambda name=name: order.append(name) for name in "abc"]
    policy = RepetitionPolicy(warmup=1, min_reps=4, max_reps=4, target_ms=0.0, rounds=3)
    timings = Timer(torch.device("cpu"), policy).interleave(calls)
    warmup, rounds = order[:3], order[3:]
    assert warmup == ["a", "b", "c"]
    assert rounds == ["a", "a", "b", "b", "c", "c", "b", "b", "c", "c", "a", "a", "c", "c", "a", "a", "b", "b"]
    assert [(t.rounds, t.repeats) for t in timings] == [(3, 6)] * 3
