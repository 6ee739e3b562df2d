"""The CPU emulation of CUDA (``tests/cuda_emulation/device_primitives_host.h``) fails loudly.

Small kernels of ``tests/cuda_emulation/run_harness_checks.cpp``, each with one planted mistake or
none: a race is reported by ThreadSanitizer in every order and changes the values between orders; a
shuffle does not order memory, __syncwarp does; a divergent or exiting warp is an error naming the
waiting threads, not a hang; shared memory is poison at every block's start; blocks run in an order
that changes with the seed; an access past the dynamic shared memory is reported by AddressSanitizer.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from emulation_runners import SANITIZER_ENV, compile_runner

POISON = -1  # 0xffffffff as int


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    directory = tmp_path_factory.mktemp("harness")
    return {sanitizer: compile_runner("run_harness_checks", directory, sanitizer) for sanitizer in ("address", "thread")}


def run(binary: Path, scenario: str, seed: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, **SANITIZER_ENV, "EMULATION_SEED": str(seed)}
    return subprocess.run([str(binary), scenario], capture_output=True, text=True, timeout=120, env=env)


def values(result: subprocess.CompletedProcess) -> list[int]:
    assert result.returncode == 0, result.stderr[-3000:]
    return [int(v) for v in result.stdout.split()]


def test_a_race_changes_the_values_between_orders(build):
    seen = {values(run(build["address"], "race", seed))[0] for seed in range(1, 9)}
    assert seen == {7, POISON}


def test_threadsanitizer_reports_a_race_in_every_order(build):
    for seed in (1, 2, 3):
        result = run(build["thread"], "race", seed)
        assert result.returncode != 0 and "data race" in result.stderr, result.stderr[-3000:]
        assert values(run(build["thread"], "no_race", seed))[0] == 7


def test_a_shuffle_does_not_order_memory_and_syncwarp_does(build):
    result = run(build["thread"], "shuffle_race")
    assert result.returncode != 0 and "data race" in result.stderr, result.stderr[-3000:]
    assert values(run(build["thread"], "syncwarp"))[0] == 7


@pytest.mark.parametrize(
    "scenario, message",
    [
        ("divergent_shuffle", "lane of the mask waits at __syncthreads() instead"),
        ("exited_lane", "a lane of the mask has exited"),
        ("mask_without_self", "a lane not in its own mask"),
    ],
)
def test_a_divergent_warp_is_an_error_not_a_hang(build, scenario, message):
    result = run(build["address"], scenario)
    assert result.returncode == 1, result.stderr[-3000:]
    assert message in result.stderr and "thread " in result.stderr


def test_shared_memory_is_poison_at_every_block_start(build):
    assert values(run(build["address"], "shared_poison")) == [POISON] * 8


def test_blocks_run_in_an_order_drawn_from_the_seed(build):
    orders = {tuple(values(run(build["address"], "block_order", seed))) for seed in range(1, 5)}
    assert len(orders) > 1 and all(sorted(order) == list(range(8)) for order in orders)


def test_an_access_past_the_shared_memory_is_reported(build):
    result = run(build["address"], "shared_overflow")
    assert result.returncode != 0 and "heap-buffer-overflow" in result.stderr, result.stderr[-3000:]
