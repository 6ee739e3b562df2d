"""How much host time does one call of each op cost before and around its kernel?

Tiny inputs (one image of 8 tokens, width 4, 2 heads), so that the kernel itself costs next to
nothing and the time per call is the host's: argument parsing, validation, backend choice and
dispatch. For each op, four rows side by side: the floor, the automatic backend called
directly without validation (``torch.ops.visionzip._<op>_<backend>`` for a C++/CUDA/Triton
backend; on a CPU, attention_importance's ``blockwise`` PyTorch function), the Python function
(``vz.<op>``), the public ``torch.ops.visionzip.<op>``, and the work the Python function adds
before the backend, alone (argument validation and the backend choice). On a GPU the floor is the CUDA C++
op, whose own host time (dispatcher, launch) is what remains once validation is paid. Configurations are measured interleaved: each round times
every configuration once (a block of ``--calls`` calls, host clock), and the table reports the
median over rounds of the microseconds per call, with the 20th and 80th percentiles, and how far
above the floor each entry point lies, taken round by round against the floor of the same round
(so that the machine's drift between rounds cancels): the host time the entry point itself adds.
One thread.

    python benchmarks/bench_host_overhead.py --publish  # rows to benchmarks/results/host_overhead_<device>.csv
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_environment import add_results_options, device_slug, environment, save_rows  # noqa: E402

import visionzip_kernels as vz  # noqa: E402
from visionzip_kernels.ops.attention_importance import op as attention_importance  # noqa: E402
from visionzip_kernels.ops.zip_tokens import op as zip_tokens  # noqa: E402
from visionzip_kernels.testing.timing import summarise  # noqa: E402


FLOOR = "(floor) backend"
ADDED = "(added) validation + backend choice"


def entry_points(device: torch.device) -> dict:
    """``(op, entry point) -> call`` for both ops on tiny inputs on ``device``; each op's first
    entry point is its floor: the automatic backend called directly, without validation."""
    gen = torch.Generator().manual_seed(0)
    hidden, attn, keys = torch.randn(1, 8, 4, generator=gen), torch.rand(1, 2, 8, generator=gen), torch.randn(1, 8, 4)
    q = torch.randn(1, 2, 8, 4, generator=gen)
    hidden, attn, keys, q = (t.to(device) for t in (hidden, attn, keys, q))
    zip_backend = zip_tokens.BACKENDS.resolve("auto", device)
    importance_backend = attention_importance.BACKENDS.resolve("auto", device)
    scale = q.shape[-1] ** -0.5
    return {
        ("zip_tokens", f"{FLOOR} {zip_backend.name}"): lambda: zip_backend.run(hidden, attn, 3, 2, keys, True),
        ("zip_tokens", ADDED): lambda: (
            zip_tokens.check_zip_tokens_args(hidden, attn, 3, 2, keys, True),
            zip_tokens.BACKENDS.resolve("auto", hidden.device),
        ),
        ("zip_tokens", f"vz.zip_tokens [{zip_backend.name}]"): lambda: vz.zip_tokens(hidden, attn, 3, 2, keys),
        ("zip_tokens", "torch.ops.visionzip.zip_tokens"): lambda: torch.ops.visionzip.zip_tokens(hidden, attn, 3, 2, keys, True),
        ("attention_importance", f"{FLOOR} {importance_backend.name}"): (
            lambda: importance_backend.run(q, q, True, scale, lse=None)
        ),
        ("attention_importance", ADDED): lambda: (
            attention_importance.check_attention_importance_args(q, q, True, None, None),
            attention_importance.BACKENDS.resolve("auto", q.device),
        ),
        ("attention_importance", f"vz.attention_importance [{importance_backend.name}]"): (
            lambda: vz.attention_importance(q, q, True)
        ),
        ("attention_importance", "torch.ops.visionzip.attention_importance"): (
            lambda: torch.ops.visionzip.attention_importance(q, q, True)
        ),
    }


def measure(calls: dict, rounds: int, calls_per_round: int, device: torch.device) -> dict:
    """Microseconds per call of each entry point in each round (one block of calls per entry point
    per round, in turn): ``key -> [us per call, one per round]``."""
    samples = {key: [] for key in calls}
    for call in calls.values():
        for _ in range(max(10, calls_per_round // 10)):
            call()
    for _ in range(rounds):
        for key, call in calls.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(calls_per_round):
                call()
            samples[key].append((time.perf_counter() - start) / calls_per_round * 1e6)
    return samples


def above_floor(samples: dict) -> dict:
    """``key -> Timing`` of each entry point's time above its op's floor, taken round by round (the
    floor measured in the same round), so that drift between rounds cancels; the ``ADDED`` row is
    that added work timed alone (where the floor is a noisy PyTorch function, it is the sharper
    figure)."""
    floors = {op: per_round for (op, entry), per_round in samples.items() if entry.startswith(FLOOR)}
    return {
        (op, entry): summarise(
            per_round if entry == ADDED else [value - floor for value, floor in zip(per_round, floors[op])]
        )
        for (op, entry), per_round in samples.items()
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where to run (default: cuda if present, else cpu)")
    parser.add_argument("--rounds", type=int, default=41, help="interleaved rounds over every entry point (default 41)")
    parser.add_argument("--calls", type=int, default=500, help="calls per entry point and round (default 500)")
    add_results_options(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device(args.device)
    samples = measure(entry_points(device), args.rounds, args.calls, device)
    timings = {key: summarise(per_round) for key, per_round in samples.items()}
    overheads = above_floor(samples)
    env = environment(device)
    rows = [
        {**env, "op": op, "entry_point": entry, "median_us": round(t.median_ms, 2), "p20_us": round(t.p20_ms, 2),
         "p80_us": round(t.p80_ms, 2), "over_floor_us": round(overheads[op, entry].median_ms, 2),
         "over_floor_p20_us": round(overheads[op, entry].p20_ms, 2),
         "over_floor_p80_us": round(overheads[op, entry].p80_ms, 2), "rounds": t.repeats,
         "calls_per_round": args.calls}
        for (op, entry), t in timings.items()
    ]
    save_rows(args.results_dir, f"host_overhead_{device_slug(device)}.csv", rows)
    print(f"{env['device']}; host microseconds per call, median [p20, p80] of {args.rounds} interleaved rounds; "
          "above the op's floor, round by round: median [p20, p80]")
    for row in rows:
        print(f"{row['op']:21} {row['entry_point']:45} {row['median_us']:8.2f} [{row['p20_us']:.2f}, "
              f"{row['p80_us']:.2f}]  +{row['over_floor_us']:.2f} [{row['over_floor_p20_us']:.2f}, "
              f"{row['over_floor_p80_us']:.2f}]")


if __name__ == "__main__":
    main()
