"""Building and running the CPU emulation runners of ``tests/cuda_emulation/`` under sanitizers.

Each runner is compiled twice: with AddressSanitizer and UndefinedBehaviorSanitizer (an access
beyond an input, an output or the shared memory, all allocated at their exact sizes, ends the run),
and with ThreadSanitizer (two threads of a block touching the same memory, one of them writing,
with no __syncthreads or __syncwarp between them, ends the run; ``block_scheduler.h``).
``EMULATION_SANITIZERS`` (comma separated, default ``address,thread``) picks the builds.

A run's thread and block orders come from its seed: the date (UTC) and the case, so that every day
tries other orders; ``EMULATION_SEED`` fixes it. A failing run's message names its seed.
"""
from __future__ import annotations

import datetime
import os
import subprocess
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EMULATION = ROOT / "tests" / "cuda_emulation"

SANITIZER_FLAGS = {
    "address": ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"],
    "thread": ["-fsanitize=thread"],
}
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0",
    "UBSAN_OPTIONS": "print_stacktrace=1",
    "TSAN_OPTIONS": "halt_on_error=1:report_signal_unsafe=0",
}


def sanitizers() -> list[str]:
    """The sanitizer builds to run, from EMULATION_SANITIZERS."""
    names = os.environ.get("EMULATION_SANITIZERS", "address,thread").split(",")
    unknown = set(names) - set(SANITIZER_FLAGS)
    if unknown:
        raise ValueError(f"EMULATION_SANITIZERS: unknown {sorted(unknown)}; use {sorted(SANITIZER_FLAGS)}")
    return names


def compile_runner(name: str, directory: Path, sanitizer: str) -> Path:
    """tests/cuda_emulation/NAME.cpp built against csrc/ with `sanitizer`; the binary's path."""
    binary = directory / f"{name}_{sanitizer}"
    command = [
        os.environ.get("CXX", "c++"), "-std=c++20", "-O1", "-g", "-pthread", "-fno-strict-aliasing",
        "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas", *SANITIZER_FLAGS[sanitizer],
        "-I", str(ROOT / "csrc"), "-I", str(EMULATION), str(EMULATION / f"{name}.cpp"), "-o", str(binary),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    return binary


def run_seed(case: str) -> int:
    """EMULATION_SEED if set, else one drawn from today's date and `case`."""
    if "EMULATION_SEED" in os.environ:
        return int(os.environ["EMULATION_SEED"])
    return zlib.crc32(f"{datetime.datetime.now(datetime.timezone.utc).date()}:{case}".encode())


def run_runner(command: list[str], case: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs a runner command with its seed; asserts it succeeded, naming the seed if not."""
    seed = run_seed(case)
    env = {**os.environ, **SANITIZER_ENV, "EMULATION_SEED": str(seed)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"EMULATION_SEED={seed} {Path(command[0]).name}:\n{result.stderr[-6000:]}"
    return result
