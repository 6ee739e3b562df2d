"""How fast is zip_tokens, per backend, against the published eager approach, at CLIP-L/336 shapes?

CLIP-L/336: N=577 tokens, width 1024, 16 heads of 64, the paper's 54 + 10 budget. Providers: every
backend available on the device (the Triton interpreter excluded: it checks kernels, it does not
time them) and `published`, the published code's selection/merge in eager PyTorch (masks,
`masked_select`, one-hot `bmm`). Every provider gets the same inputs: `attn` as the full
`[B, H, N, N]` map the published code reads (layout `full`) or as the `[B, H, N]` CLS rows that
`attention_importance` produces (layout `rows`), and head-averaged keys `[B, N, 64]`.

On a GPU each call is timed with CUDA events and, for the fused backends, also as CUDA-graph
replays; the bytes the op must move (hidden once, the attention rows it reads, keys, outputs) over
the median time are printed as a fraction of the measured device-to-device copy bandwidth.
Rows go to `benchmarks/results/zip_tokens_<device>.csv`; a table is printed last.

    python benchmarks/bench_zip_tokens.py                # defaults for the device present
    python benchmarks/bench_zip_tokens.py --batches 8 --dtypes float32 --layouts full
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_environment import RESULTS_DIR, device_slug, environment, write_rows  # noqa: E402

import visionzip_kernels as vz  # noqa: E402
from visionzip_kernels.testing.published import published_zip_tokens  # noqa: E402
from visionzip_kernels.testing.timing import copy_bandwidth_gbps, sets_to_exceed_cache, time_calls  # noqa: E402

N_TOKENS, WIDTH, HEADS, HEAD_DIM, K_DOM, K_CTX = 577, 1024, 16, 64, 54, 10
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def make_inputs(batch: int, dtype: torch.dtype, layout: str, device: torch.device, seed: int) -> tuple:
    gen = torch.Generator(device=device).manual_seed(seed)
    hidden = torch.randn(batch, N_TOKENS, WIDTH, generator=gen, device=device, dtype=dtype)
    shape = (batch, HEADS, N_TOKENS, N_TOKENS) if layout == "full" else (batch, HEADS, N_TOKENS)
    attn = torch.randn(shape, generator=gen, device=device).mul_(3).softmax(-1).to(dtype)
    keys = torch.randn(batch, N_TOKENS, HEAD_DIM, generator=gen, device=device, dtype=dtype)
    return hidden, attn, keys


def bytes_moved(batch: int, dtype: torch.dtype) -> int:
    """Fewest bytes the op must move: hidden read once, one attention row per head, keys, outputs."""
    size = torch.empty((), dtype=dtype).element_size()
    reads = batch * (N_TOKENS * WIDTH + HEADS * N_TOKENS + N_TOKENS * HEAD_DIM) * size
    writes = batch * ((K_DOM + K_CTX) * WIDTH * size + K_DOM * 8)
    return reads + writes


def providers(device: torch.device) -> dict:
    def backend_call(name):
        return lambda hidden, attn, keys: vz.zip_tokens(hidden, attn, K_DOM, K_CTX, keys, True, backend=name)

    timed = [name for name in vz.available_backends(device) if not (name == "triton" and device.type == "cpu")]
    calls = {name: backend_call(name) for name in timed}
    calls["published"] = lambda hidden, attn, keys: published_zip_tokens(hidden, attn, K_DOM, K_CTX, keys)
    return calls


def run(device: torch.device, batches, dtypes, layouts, results_dir: Path) -> list[dict]:
    env = environment(device)
    bandwidth = copy_bandwidth_gbps(device) if device.type == "cuda" else None
    calls = providers(device)
    rows = []
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        for layout in layouts:
            for batch in batches:
                one_set = make_inputs(batch, dtype, layout, device, seed=0)
                set_bytes = sum(t.numel() * t.element_size() for t in one_set)
                n_sets = sets_to_exceed_cache(set_bytes)
                arg_sets = [one_set] + [make_inputs(batch, dtype, layout, device, seed=s) for s in range(1, n_sets)]
                for provider, fn in calls.items():
                    # Graph replays for the fused backends only: the reference and the published code
                    # index with boolean masks, which synchronise the host and cannot be captured.
                    if device.type != "cuda":
                        modes = ["wall"]
                    else:
                        modes = ["events", "graph"] if provider in ("triton", "cuda") else ["events"]
                    for mode in modes:
                        timing = time_calls(fn, arg_sets, device, graph=mode == "graph",
                                            repeats=50 if device.type == "cuda" else 15)
                        moved = bytes_moved(batch, dtype)
                        achieved = moved / (timing.median_ms * 1e-3) / 1e9
                        rows.append({
                            **env, "provider": provider, "timing": mode, "dtype": dtype_name, "attn_layout": layout,
                            "batch": batch, "n_tokens": N_TOKENS, "width": WIDTH, "heads": HEADS,
                            "head_dim": HEAD_DIM, "k_dom": K_DOM, "k_ctx": K_CTX,
                            "median_ms": round(timing.median_ms, 5), "p20_ms": round(timing.p20_ms, 5),
                            "p80_ms": round(timing.p80_ms, 5), "bytes_moved": moved,
                            "achieved_gbps": round(achieved, 2),
                            "copy_bandwidth_gbps": round(bandwidth, 1) if bandwidth else "",
                            "fraction_of_copy_bw": round(achieved / bandwidth, 3) if bandwidth else "",
                        })
                del arg_sets, one_set
    path = write_rows(results_dir / f"zip_tokens_{device_slug(device)}.csv", rows)
    print(f"wrote {len(rows)} rows to {path}")
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"\nzip_tokens on {rows[0]['device']}, N={N_TOKENS} D={WIDTH} H={HEADS} {K_DOM}+{K_CTX}; "
          "median ms (p20-p80); x = speed-up over published")
    header = f"{'dtype':9} {'attn':5} {'B':>4}  {'provider':10} {'timing':6} {'median ms':>10} {'p20-p80':>17} {'x':>7} {'copy bw':>8}"
    print(header)
    print("-" * len(header))
    for row in rows:
        base = next(r for r in rows if r["provider"] == "published" and all(
            r[k] == row[k] for k in ("dtype", "attn_layout", "batch")))
        speedup = base["median_ms"] / row["median_ms"]
        fraction = f"{row['fraction_of_copy_bw']:.0%}" if row["fraction_of_copy_bw"] != "" else "-"
        print(f"{row['dtype']:9} {row['attn_layout']:5} {row['batch']:>4}  {row['provider']:10} {row['timing']:6} "
              f"{row['median_ms']:>10.4f} {row['p20_ms']:>8.4f}-{row['p80_ms']:<8.4f} {speedup:>6.1f}x {fraction:>8}")


def main(argv=None) -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 256] if cuda else [1, 8, 32])
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES),
                        default=["bfloat16", "float16", "float32"] if cuda else ["float32", "bfloat16"])
    parser.add_argument("--layouts", nargs="+", choices=["full", "rows"], default=["full", "rows"])
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    rows = run(torch.device(args.device), args.batches, args.dtypes, args.layouts, args.results_dir)
    print_table(rows)


if __name__ == "__main__":
    main()
