"""How fast is zip_tokens, per backend and per kernel, against the published eager approach?

Geometries: CLIP-L/336 (N=577, width 1024, 16 heads of 64, a CLS token) and SigLIP-384 (N=729,
width 1152, 16 heads of 72, no CLS), the paper's 54 + 10 budget. Providers: every backend available
on the device (the Triton interpreter excluded: it checks kernels, it does not time them) and
`published`, the published code's selection/merge in eager PyTorch (masks, `masked_select`, one-hot
`bmm`), which reads the CLS query's row and so runs for CLIP only. Every provider gets the same
inputs: `attn` as the full `[B, H, N, N]` map (layout `full`: the CLS row with CLS, every query's
row without) or as the `[B, H, N]` rows that `attention_importance` produces (layout `rows`), and
head-averaged keys `[B, N, head_dim]`.

On a GPU each call is timed with CUDA events and, for the fused backends, also as CUDA-graph
replays; the bytes the op must move (hidden once, the attention it must read, keys, outputs) over
the median time are given as a fraction of the measured device-to-device copy bandwidth. For the
fused backends the profiler also times each kernel the op launches (median device time per call,
eager launches): `plan_ms` sums the kernels that decide the indices, `apply_ms` is the kernel that
writes the tokens, and `kernels` lists them all by name.
With `--publish` rows go to `benchmarks/results/zip_tokens_<device>.csv`; a table is printed last.

    python benchmarks/bench_zip_tokens.py                # defaults for the device present
    python benchmarks/bench_zip_tokens.py --models clip-l-336 --batches 1 256 --dtypes bfloat16 --layouts rows
"""
from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_environment import add_results_options, device_slug, environment, save_rows, write_rows  # noqa: E402

import visionzip_kernels as vz  # noqa: E402
from visionzip_kernels.testing.published import published_zip_tokens  # noqa: E402
from visionzip_kernels.testing.timing import copy_bandwidth_gbps, sets_to_exceed_cache, time_calls  # noqa: E402

K_DOM, K_CTX = 54, 10
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FUSED = ("triton", "cuda")


@dataclass(frozen=True)
class Geometry:
    n_tokens: int
    width: int
    heads: int
    head_dim: int
    has_cls: bool


MODELS = {
    "clip-l-336": Geometry(577, 1024, 16, 64, has_cls=True),
    "siglip-384": Geometry(729, 1152, 16, 72, has_cls=False),
}


def make_inputs(geometry: Geometry, batch: int, dtype: torch.dtype, layout: str, device: torch.device, seed: int):
    gen = torch.Generator(device=device).manual_seed(seed)
    n = geometry.n_tokens
    hidden = torch.randn(batch, n, geometry.width, generator=gen, device=device, dtype=dtype)
    shape = (batch, geometry.heads, n, n) if layout == "full" else (batch, geometry.heads, n)
    attn = torch.randn(shape, generator=gen, device=device).mul_(3).softmax(-1).to(dtype)
    keys = torch.randn(batch, n, geometry.head_dim, generator=gen, device=device, dtype=dtype)
    return hidden, attn, keys


def bytes_moved(geometry: Geometry, batch: int, dtype: torch.dtype, layout: str) -> int:
    """Fewest bytes the op must move: hidden once, the attention it must read (one row per head, or
    the whole map of a full layout without CLS), keys, and the outputs."""
    size = torch.empty((), dtype=dtype).element_size()
    n = geometry.n_tokens
    attn_read = geometry.heads * n * (n if layout == "full" and not geometry.has_cls else 1)
    reads = batch * (n * geometry.width + attn_read + n * geometry.head_dim) * size
    writes = batch * ((K_DOM + K_CTX) * geometry.width * size + K_DOM * 8)
    return reads + writes


def providers(device: torch.device, geometry: Geometry) -> dict:
    def backend_call(name):
        return lambda hidden, attn, keys: vz.zip_tokens(
            hidden, attn, K_DOM, K_CTX, keys, geometry.has_cls, backend=name
        )

    timed = [name for name in vz.available_backends(device) if not (name == "triton" and device.type == "cpu")]
    calls = {name: backend_call(name) for name in timed}
    if geometry.has_cls:
        calls["published"] = lambda hidden, attn, keys: published_zip_tokens(hidden, attn, K_DOM, K_CTX, keys)
    return calls


def short_kernel_name(name: str) -> str:
    """'void visionzip::cuda::zip_plan_kernel<float, float>(...)' -> 'zip_plan_kernel'."""
    head = name.replace("(anonymous namespace)", "").split("(")[0].split("<")[0].split("::")[-1].split()
    return head[-1] if head else name


def kernel_times_ms(fn, arg_sets, device: torch.device, calls: int = 20) -> dict[str, float]:
    """Device milliseconds per call of each kernel ``fn`` launches, by short name: the median
    launch's duration times the launches per call, from the profiler over ``calls`` eager calls."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn(*arg_sets[0])
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(calls):
            fn(*arg_sets[i % len(arg_sets)])
        torch.cuda.synchronize(device)
    durations = defaultdict(list)
    for event in prof.events():
        if event.device_type == DeviceType.CUDA:
            durations[short_kernel_name(event.name)].append(event.time_range.elapsed_us() / 1e3)
    return {name: statistics.median(times) * len(times) / calls for name, times in sorted(durations.items())}


def kernel_columns(times: dict[str, float] | None) -> dict:
    """The rows' per-kernel columns: the plan's kernels summed, the apply kernel, and every kernel."""
    if not times:
        return {"plan_ms": "", "apply_ms": "", "kernels": ""}
    apply = sum(ms for name, ms in times.items() if "apply" in name)
    plan = sum(ms for name, ms in times.items() if "apply" not in name)
    listed = ";".join(f"{name}={ms:.5f}" for name, ms in times.items())
    return {"plan_ms": round(plan, 5), "apply_ms": round(apply, 5), "kernels": listed}


def run(device: torch.device, models, batches, dtypes, layouts, results_dir: Path | None) -> list[dict]:
    """Time every provider on every case; with a ``results_dir`` the rows are rewritten to the results
    file after each case, so that a run stopped by a time limit keeps what it measured."""
    env = environment(device)
    bandwidth = copy_bandwidth_gbps(device) if device.type == "cuda" else None
    name = f"zip_tokens_{device_slug(device)}.csv"
    rows = []
    for model in models:
        geometry = MODELS[model]
        calls = providers(device, geometry)
        for dtype_name in dtypes:
            dtype = DTYPES[dtype_name]
            for layout in layouts:
                for batch in batches:
                    one_set = make_inputs(geometry, batch, dtype, layout, device, seed=0)
                    set_bytes = sum(t.numel() * t.element_size() for t in one_set)
                    n_sets = sets_to_exceed_cache(set_bytes)
                    arg_sets = [one_set] + [
                        make_inputs(geometry, batch, dtype, layout, device, seed=s) for s in range(1, n_sets)
                    ]
                    moved = bytes_moved(geometry, batch, dtype, layout)
                    for provider, fn in calls.items():
                        # Graph replays for the fused backends only: the reference and the published
                        # code index with boolean masks, which synchronise the host and cannot be captured.
                        fused_gpu = device.type == "cuda" and provider in FUSED
                        if device.type != "cuda":
                            modes = ["wall"]
                        else:
                            modes = ["events", "graph"] if fused_gpu else ["events"]
                        kernels = kernel_columns(kernel_times_ms(fn, arg_sets, device) if fused_gpu else None)
                        for mode in modes:
                            timing = time_calls(fn, arg_sets, device, graph=mode == "graph",
                                                repeats=50 if device.type == "cuda" else 15)
                            achieved = moved / (timing.median_ms * 1e-3) / 1e9
                            rows.append({
                                **env, "model": model, "provider": provider, "timing": mode, "dtype": dtype_name,
                                "attn_layout": layout, "batch": batch, "n_tokens": geometry.n_tokens,
                                "width": geometry.width, "heads": geometry.heads, "head_dim": geometry.head_dim,
                                "has_cls": geometry.has_cls, "k_dom": K_DOM, "k_ctx": K_CTX,
                                "median_ms": round(timing.median_ms, 5), "p20_ms": round(timing.p20_ms, 5),
                                "p80_ms": round(timing.p80_ms, 5), "repeats": timing.repeats, **kernels,
                                "bytes_moved": moved,
                                "achieved_gbps": round(achieved, 2),
                                "copy_bandwidth_gbps": round(bandwidth, 1) if bandwidth else "",
                                "fraction_of_copy_bw": round(achieved / bandwidth, 3) if bandwidth else "",
                            })
                    del arg_sets, one_set
                    if results_dir is not None:
                        write_rows(results_dir / name, rows)
    save_rows(results_dir, name, rows)
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"\nzip_tokens on {rows[0]['device']}, {K_DOM}+{K_CTX}; median ms (p20-p80) of {rows[0]['repeats']} calls; "
          "x = speed-up over "
          "published (CLIP only); plan/apply = the kernels' own device times, us per call")
    header = (f"{'model':10} {'dtype':8} {'attn':4} {'B':>4}  {'provider':9} {'timing':6} {'median ms':>9} "
              f"{'p20-p80':>17} {'x':>6} {'copy bw':>7} {'plan/apply us':>14}")
    print(header)
    print("-" * len(header))
    for row in rows:
        base = next((r for r in rows if r["provider"] == "published" and all(
            r[k] == row[k] for k in ("model", "dtype", "attn_layout", "batch"))), None)
        speedup = f"{base['median_ms'] / row['median_ms']:.1f}x" if base else "-"
        fraction = f"{row['fraction_of_copy_bw']:.0%}" if row["fraction_of_copy_bw"] != "" else "-"
        kernels = f"{row['plan_ms'] * 1e3:.1f}/{row['apply_ms'] * 1e3:.1f}" if row["plan_ms"] != "" else "-"
        print(f"{row['model'][:10]:10} {row['dtype']:8} {row['attn_layout']:4} {row['batch']:>4}  "
              f"{row['provider']:9} {row['timing']:6} {row['median_ms']:>9.4f} "
              f"{row['p20_ms']:>8.4f}-{row['p80_ms']:<8.4f} {speedup:>6} {fraction:>7} {kernels:>14}")


def main(argv=None) -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu", help="where to run (default: cuda if present, else cpu)")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS),
                        help="encoder geometries (default: all)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 5, 8, 32, 256] if cuda else [1, 8],
                        help="images per call (default: 1 5 8 32 256 on a GPU, 1 8 on the CPU)")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES),
                        default=["bfloat16", "float16", "float32"] if cuda else ["float32", "bfloat16"],
                        help="dtypes of hidden, attn and keys (default: all three on a GPU, float32 bfloat16 on the CPU)")
    parser.add_argument("--layouts", nargs="+", choices=["full", "rows"], default=["full", "rows"],
                        help="attn as the full [B, H, N, N] map or the CLS rows [B, H, N] (default: both)")
    add_results_options(parser)
    args = parser.parse_args(argv)
    rows = run(torch.device(args.device), args.models, args.batches, args.dtypes, args.layouts, args.results_dir)
    print_table(rows)


if __name__ == "__main__":
    main()
