"""Barrier mutation check: every __syncthreads() / __syncwarp() of the CUDA kernels is needed, and
the CPU emulation (tests/test_*_emulated.py) proves it.

For each barrier in csrc/*.cu and csrc/*.cuh (one at a time), a copy of the repository's csrc/,
tests/ and visionzip_kernels/ (taken once, at the start) gets that one barrier deleted, and the emulated test files whose
runners (tests/cuda_emulation/run_*.cpp) include the mutated file, directly or through other
headers, run against the copy. The mutant is killed when they fail; the check fails unless every
mutant is killed.

    python tools/barrier_mutations.py            # a sample of --sample barriers, drawn from the date
    python tools/barrier_mutations.py --all      # every barrier
    python tools/barrier_mutations.py --list     # the barriers, nothing run
    python tools/barrier_mutations.py --all --only zip_apply   # every barrier of matching files

Prints one line per mutant and the score (killed / run).
"""
from __future__ import annotations

import argparse
import datetime
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BARRIER = re.compile(r"__syncthreads\(\)|__syncwarp\(\)")
INCLUDE = re.compile(r'^\s*#include\s+"([^"]+)"', re.MULTILINE)
COPIED = ("csrc", "tests", "visionzip_kernels")


@dataclass(frozen=True)
class Barrier:
    path: str  # relative to the repository
    line: int  # 1-based
    column: int  # 0-based start of the call

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


def find_barriers(root: Path = ROOT) -> list[Barrier]:
    """Every barrier call in csrc/*.cu and csrc/*.cuh outside comments, in file and line order."""
    barriers = []
    for path in sorted([*root.glob("csrc/*.cu"), *root.glob("csrc/*.cuh")]):
        for number, text in enumerate(path.read_text().splitlines(), start=1):
            code = text.split("//", 1)[0]
            for match in BARRIER.finditer(code):
                barriers.append(Barrier(str(path.relative_to(root)), number, match.start()))
    return barriers


def includes(path: Path, search: list[Path], seen: set[Path]) -> set[Path]:
    """The files `path` includes with #include "...", found in `search`, transitively."""
    for name in INCLUDE.findall(path.read_text()):
        for folder in search:
            found = (folder / name).resolve()
            if found.exists() and found not in seen:
                seen.add(found)
                includes(found, search, seen)
                break
    return seen


def tests_covering(barrier: Barrier, root: Path = ROOT) -> list[str]:
    """The emulated test files whose runners include the barrier's file."""
    search = [root / "csrc", root / "tests" / "cuda_emulation"]
    target = (root / barrier.path).resolve()
    runners = {
        runner.stem for runner in (root / "tests" / "cuda_emulation").glob("run_*.cpp")
        if target in includes(runner, search, set())
    }
    return [
        str(test.relative_to(root)) for test in sorted((root / "tests").glob("test_*_emulated.py"))
        if any(re.search(rf"\b{runner}\b", test.read_text()) for runner in runners)
    ]


def mutate(copy: Path, barrier: Barrier) -> None:
    """Deletes the barrier's call in the copy, leaving an empty statement."""
    path = copy / barrier.path
    lines = path.read_text().splitlines(keepends=True)
    text = lines[barrier.line - 1]
    match = BARRIER.match(text, barrier.column)
    assert match, f"{barrier}: no barrier at column {barrier.column}"
    lines[barrier.line - 1] = text[: match.start()] + text[match.end():]
    path.write_text("".join(lines))


def snapshot(workdir: Path) -> Path:
    """A copy of the repository's csrc/, tests/ and visionzip_kernels/ as they are now."""
    base = workdir / "base"
    for name in COPIED:
        shutil.copytree(ROOT / name, base / name, ignore=shutil.ignore_patterns("__pycache__"))
    return base


def run_mutant(barrier: Barrier, base: Path, workdir: Path) -> tuple[str, float]:
    """'killed', 'survived' or 'not covered', and the seconds it took."""
    tests = tests_covering(barrier, base)
    if not tests:
        return "not covered", 0.0
    copy = workdir / f"{Path(barrier.path).stem}_{barrier.line}_{barrier.column}"
    shutil.copytree(base, copy)
    mutate(copy, barrier)
    start = time.monotonic()
    # ThreadSanitizer first: it reports a missing barrier in the first case that crosses it.
    env = {"EMULATION_SANITIZERS": "thread,address", **os.environ, "PYTHONPATH": str(copy)}
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    result = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True)
    shutil.rmtree(copy)
    return ("killed" if result.returncode != 0 else "survived"), time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="every barrier, not a sample")
    parser.add_argument("--sample", type=int, default=2, help="barriers per run without --all (default 2)")
    parser.add_argument("--seed", type=int, help="the sample's seed (default: from today's date, UTC)")
    parser.add_argument("--list", action="store_true", help="list the barriers and the tests covering each")
    parser.add_argument("--only", help="only the barriers of files whose path contains this text")
    parser.add_argument("--shard", default="0/1", help="K/N: every N-th barrier from the K-th (0-based), to split a sweep")
    args = parser.parse_args(argv)

    shard, shards = map(int, args.shard.split("/"))
    barriers = [b for b in find_barriers() if args.only is None or args.only in b.path][shard::shards]
    if args.list:
        for barrier in barriers:
            print(barrier, " ".join(tests_covering(barrier)) or "(no emulated test)")
        return 0
    chosen = barriers
    if not args.all:
        seed = args.seed if args.seed is not None else zlib.crc32(str(datetime.datetime.now(datetime.timezone.utc).date()).encode())
        chosen = sorted(random.Random(seed).sample(barriers, min(args.sample, len(barriers))), key=barriers.index)
        print(f"sample of {len(chosen)} of {len(barriers)} barriers, seed {seed} (--all for every one)")
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="barrier_mutations_") as workdir:
        base = snapshot(Path(workdir))
        for barrier in chosen:
            outcome, seconds = run_mutant(barrier, base, Path(workdir))
            outcomes.append(outcome)
            print(f"{outcome:12} {barrier} ({seconds:.0f} s)", flush=True)
    killed = outcomes.count("killed")
    print(f"mutation score: {killed}/{len(outcomes)} barriers killed")
    return 0 if killed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
