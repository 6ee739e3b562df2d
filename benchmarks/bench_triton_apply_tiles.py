"""Which tiles bring the Triton apply kernel closest to the copy bandwidth?

The plan of a CLIP-L/336 batch (N=577, D=1024, 54+10, bf16, attn as CLS rows) is computed once;
then ``launch_apply`` alone is timed with the launch configuration the backend picks and with
variants of its apply tiles (channels per program, rows per step, pipeline stages, warps). Any tiles
give the same tokens up to the merge sums' float32 rounding; only time moves. On a GPU each is
timed as CUDA-graph replays, and the bytes the apply must move (``hidden`` once, the roles, the
output) over the median time are given as a fraction of the measured device-to-device copy
bandwidth. On a CPU the kernels run under Triton's interpreter at a small batch: that checks the
script, it times nothing of interest. With ``--publish`` rows go to
``benchmarks/results/triton_apply_tiles_<device>.csv``; a table is printed last.

    python benchmarks/bench_triton_apply_tiles.py                # defaults for the device present
    python benchmarks/bench_triton_apply_tiles.py --batches 256
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are defined

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_zip_tokens import K_CTX, K_DOM, MODELS, make_inputs  # noqa: E402
from run_environment import add_results_options, device_slug, environment, save_rows, write_rows  # noqa: E402

from visionzip_kernels.ops.zip_tokens.triton import launch_apply, launch_config, launch_plan  # noqa: E402
from visionzip_kernels.testing.timing import copy_bandwidth_gbps, time_calls  # noqa: E402

# (block_c, block_j, apply_stages, apply_warps) tried beside the backend's own choice.
VARIANTS = [(128, 64, 5, 4), (64, 128, 5, 4), (128, 64, 6, 4), (128, 128, 5, 8), (64, 64, 5, 4), (32, 128, 5, 4)]


def apply_bytes(batch: int, n_tokens: int, width: int, size: int) -> int:
    """``hidden`` read once, the int32 roles, the output written."""
    return batch * (n_tokens * width * size + n_tokens * 4 + (K_DOM + K_CTX) * width * size)


def run(device: torch.device, batches, results_dir: Path | None) -> list[dict]:
    """Time the chosen tiles and every variant at each batch; with a ``results_dir`` the rows are
    rewritten after each batch, so that a run stopped by a time limit keeps what it measured."""
    geometry = MODELS["clip-l-336"]
    env = environment(device)
    bandwidth = copy_bandwidth_gbps(device) if device.type == "cuda" else None
    rows = []
    for batch in batches:
        hidden, attn, keys = make_inputs(geometry, batch, torch.bfloat16, "rows", device, seed=0)
        chosen = launch_config(device, batch, geometry.n_tokens, geometry.width, K_CTX)
        plan = launch_plan(hidden, attn, K_DOM, K_CTX, keys, True, chosen)
        moved = apply_bytes(batch, geometry.n_tokens, geometry.width, hidden.element_size())
        configs = {"chosen": chosen}
        for block_c, block_j, stages, warps in VARIANTS:
            name = f"c{block_c}-j{block_j}-s{stages}-w{warps}"
            configs[name] = replace(chosen, block_c=block_c, block_j=block_j, apply_stages=stages, apply_warps=warps)
        for name, config in configs.items():
            timing = time_calls(
                lambda: launch_apply(hidden, plan, K_DOM, K_CTX, config), [()], device,
                graph=device.type == "cuda", repeats=30 if device.type == "cuda" else 2, warmup=1,
            )
            achieved = moved / (timing.median_ms * 1e-3) / 1e9
            rows.append({
                **env, "batch": batch, "tiles": name, "block_c": config.block_c, "block_j": config.block_j,
                "apply_stages": config.apply_stages, "apply_warps": config.apply_warps,
                "median_ms": round(timing.median_ms, 5), "p20_ms": round(timing.p20_ms, 5),
                "p80_ms": round(timing.p80_ms, 5), "repeats": timing.repeats, "bytes_moved": moved,
                "achieved_gbps": round(achieved, 2),
                "copy_bandwidth_gbps": round(bandwidth, 1) if bandwidth else "",
                "fraction_of_copy_bw": round(achieved / bandwidth, 3) if bandwidth else "",
            })
        if results_dir is not None:
            write_rows(results_dir / f"triton_apply_tiles_{device_slug(device)}.csv", rows)
    save_rows(results_dir, f"triton_apply_tiles_{device_slug(device)}.csv", rows)
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"\nTriton apply_kernel alone on {rows[0]['device']}, CLIP-L/336 bf16 {K_DOM}+{K_CTX}; median us (p20-p80) of {rows[0]['repeats']} calls")
    header = f"{'B':>4}  {'tiles':18} {'median us':>10} {'p20-p80 us':>17} {'GB/s':>8} {'copy bw':>7}"
    print(header)
    print("-" * len(header))
    for row in rows:
        fraction = f"{row['fraction_of_copy_bw']:.0%}" if row["fraction_of_copy_bw"] != "" else "-"
        print(f"{row['batch']:>4}  {row['tiles']:18} {row['median_ms'] * 1e3:>10.1f} "
              f"{row['p20_ms'] * 1e3:>8.1f}-{row['p80_ms'] * 1e3:<8.1f} {row['achieved_gbps']:>8.1f} {fraction:>7}")


def main(argv=None) -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu", help="where to run (default: cuda if present, else cpu)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 256] if cuda else [1],
                        help="images per call (default: 1 8 256 on a GPU, 1 on the CPU)")
    add_results_options(parser)
    args = parser.parse_args(argv)
    print_table(run(torch.device(args.device), args.batches, args.results_dir))


if __name__ == "__main__":
    main()
