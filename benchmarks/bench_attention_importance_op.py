"""How long does ``attention_importance`` take on each backend, at the vision encoders' shapes?

Random q, k as the encoder hands them (``[B, H, N, hd]`` token-major views of ``[B, N, H * hd]``
projections, scores with a standard deviation of about 2) for

- CLIP-L/336: N = 577, 16 heads of 64, the CLS query's row (``has_cls=True``);
- SigLIP-SO400M/384: N = 729, 16 heads of 72, the column mean (``has_cls=False``), once with the
  row pass (``lse`` computed) and once with ``lse`` given (as an attention kernel returns it).

Every backend available on the device is timed through the public function
(``attention_importance(q, k, ..., backend=name)``, so the eager numbers include its host work):
on a GPU in bfloat16 at batches 1, 5 and 32, with CUDA events around each call (``events``) and
as replays of a CUDA graph of 20 calls (``graph``, launch overhead amortised); on the CPU in
float32 at batch 1, wall clock (``wall``). Calls rotate through enough input sets to outgrow the
caches. Times are medians with p20/p80 over ``--repeats`` samples.

With ``--publish`` rows go to ``benchmarks/results/attention_importance_op_<device>.csv``; a table with each backend's
time next to the fastest is printed last.

    python benchmarks/bench_attention_importance_op.py
    python benchmarks/bench_attention_importance_op.py --models clip --batches 1 --backends cuda triton
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_environment import add_results_options, device_slug, environment, save_rows  # noqa: E402

from visionzip_kernels import attention_importance  # noqa: E402
from visionzip_kernels.ops.attention_importance import available_backends  # noqa: E402
from visionzip_kernels.testing.timing import sets_to_exceed_cache, time_calls  # noqa: E402


@dataclass(frozen=True)
class Config:
    """One timed problem: an encoder's attention geometry and how importance is asked for."""

    model: str
    n_tokens: int
    heads: int
    head_dim: int
    has_cls: bool
    lse_given: bool

    @property
    def query(self) -> str:
        """Which importance is asked for, in words."""
        return "cls" if self.has_cls else ("mean, lse given" if self.lse_given else "mean")


CONFIGS = {
    "clip": [Config("CLIP-L/336", 577, 16, 64, True, False)],
    "siglip": [
        Config("SigLIP-SO400M/384", 729, 16, 72, False, False),
        Config("SigLIP-SO400M/384", 729, 16, 72, False, True),
    ],
}


def make_inputs(config: Config, batch: int, dtype, device, gen) -> tuple:
    """(q, k, has_cls, scale, lse) for one call; lse is None unless the config gives it."""
    q, k = (
        torch.randn(batch, config.n_tokens, config.heads, config.head_dim, generator=gen, device=device)
        .mul(1.4).to(dtype).transpose(1, 2)
        for _ in range(2)
    )
    scale = config.head_dim**-0.5
    lse = None
    if config.lse_given:  # one image at a time: the [H, N, N] scores of a batch may not fit
        lse = torch.stack([
            torch.logsumexp(q[b].float() @ k[b].float().transpose(-1, -2) * scale, dim=-1) for b in range(batch)
        ])
    return q, k, config.has_cls, scale, lse


def call(backend: str):
    def run(q, k, has_cls, scale, lse):
        return attention_importance(q, k, has_cls, scale, lse=lse, backend=backend)

    return run


def measure(config: Config, batch: int, backends, device, dtype, repeats: int, env: dict) -> list[dict]:
    gen = torch.Generator(device=device).manual_seed(batch)
    bytes_per_set = 2 * batch * config.n_tokens * config.heads * config.head_dim * dtype.itemsize
    n_sets = sets_to_exceed_cache(bytes_per_set) if device.type == "cuda" else 2
    arg_sets = [make_inputs(config, batch, dtype, device, gen) for _ in range(n_sets)]
    timings = ("events", "graph") if device.type == "cuda" else ("wall",)
    rows = []
    for backend in backends:
        for timing_mode in timings:
            timing = time_calls(call(backend), arg_sets, device, repeats=repeats, graph=timing_mode == "graph")
            rows.append({
                **env, "model": config.model, "dtype": str(dtype).removeprefix("torch."), "batch": batch,
                "n_tokens": config.n_tokens, "heads": config.heads, "head_dim": config.head_dim,
                "has_cls": config.has_cls, "lse_given": config.lse_given, "query": config.query, "provider": backend,
                "timing": timing_mode, "median_ms": round(timing.median_ms, 5), "p20_ms": round(timing.p20_ms, 5),
                "p80_ms": round(timing.p80_ms, 5), "repeats": timing.repeats,
            })
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"\nattention_importance per backend on {rows[0]['device']} ({rows[0]['dtype']}): median us "
          "(p20-p80) of {rows[0]['repeats']} calls, x = time / the fastest backend's in the same timing")
    header = f"{'model':18} {'query':15} {'B':>3} {'timing':7} {'provider':10} {'median us':>10} {'p20-p80 us':>19} {'x':>6}"
    print(header)
    print("-" * len(header))
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["query"], row["batch"], row["timing"]), []).append(row)
    for (model, query, batch, timing_mode), group in groups.items():
        fastest = min(r["median_ms"] for r in group)
        for row in sorted(group, key=lambda r: r["median_ms"]):
            print(f"{model:18} {query:15} {batch:>3} {timing_mode:7} {row['provider']:10} "
                  f"{1e3 * row['median_ms']:>10.1f} {1e3 * row['p20_ms']:>9.1f}-{1e3 * row['p80_ms']:<9.1f} "
                  f"{row['median_ms'] / fastest:>6.2f}")


def main(argv=None) -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu", help="where to run (default: cuda if present, else cpu)")
    parser.add_argument("--models", nargs="+", choices=sorted(CONFIGS), default=sorted(CONFIGS),
                        help="encoder geometries (default: all)")
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="default: 1 5 32 on a GPU, 1 on the CPU")
    parser.add_argument("--backends", nargs="+", default=None,
                        help="default: every backend available on the device (on the CPU, Triton's interpreter left out)")
    parser.add_argument("--repeats", type=int, default=None, help="samples per row (default: 50 on a GPU, 5 on the CPU)")
    add_results_options(parser)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    dtype = torch.bfloat16 if on_gpu else torch.float32
    batches = args.batches or ([1, 5, 32] if on_gpu else [1])
    repeats = args.repeats or (50 if on_gpu else 5)
    backends = args.backends or [b for b in available_backends(device) if on_gpu or b != "triton"]
    env = environment(device)
    rows = []
    with torch.inference_mode():
        for name in args.models:
            for config in CONFIGS[name]:
                for batch in batches:
                    rows += measure(config, batch, backends, device, dtype, repeats, env)
    save_rows(args.results_dir, f"attention_importance_op_{device_slug(device)}.csv", rows)
    print_table(rows)


if __name__ == "__main__":
    main()
