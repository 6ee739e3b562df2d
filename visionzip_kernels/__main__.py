"""``python -m visionzip_kernels``, the self-check: every backend against the reference, then timed.

On built-in synthetic inputs at CLIP-L/336 (577 tokens with CLS, width 1024, 16 heads of 64) and
SigLIP-SO400M/384 (729 tokens without CLS, width 1152, 16 heads of 72) shapes, with the attention
rows and per-head keys that the package's encoder path produces and the paper's 54 + 10 budget:
each available backend's output is compared with the reference (dominant indices exactly, values
under ``testing/parity.py``'s tolerances). The backends are then timed interleaved, round after
round (``testing/timing.py``'s ``round_medians``): each row gives the median time per call with its
p20-p80 across rounds, and the speed-up over the reference (timed as the baseline, not compared
with itself) taken round by round, with its p20-p80, or "too noisy" where the rounds disagree too
much to read it (``Ratio.readable``). Exits non-zero if any backend disagrees with the reference.
Backends run by Triton's interpreter are checked but not timed.
"""
from __future__ import annotations

import argparse
import sys

import torch

from . import available_backends, zip_tokens
from .backends import triton_interpreter_on
from .testing.parity import compare_to_reference
from .testing.timing import MAX_RATIO_SPREAD, Ratio, ratio_per_round, round_medians, summarise

# name, tokens, width, heads, head_dim, has_cls
GEOMETRIES = [
    ("CLIP-L/336", 577, 1024, 16, 64, True),
    ("SigLIP-384", 729, 1152, 16, 72, False),
]
K_DOM, K_CTX = 54, 10


def synthetic_inputs(geometry, batch: int, dtype: torch.dtype, device: torch.device) -> dict:
    """Seeded random inputs: softmax attention rows, normal hidden states and per-head keys."""
    _, n_tokens, width, heads, head_dim, has_cls = geometry
    gen = torch.Generator().manual_seed(n_tokens * 1000 + batch)
    tensors = {
        "hidden": torch.randn(batch, n_tokens, width, generator=gen),
        "attn": torch.randn(batch, heads, n_tokens, generator=gen).mul(3).softmax(-1),
        "keys": torch.randn(batch, heads, n_tokens, head_dim, generator=gen),
    }
    inputs = {name: t.to(device=device, dtype=dtype) for name, t in tensors.items()}
    return {**inputs, "k_dom": K_DOM, "k_ctx": K_CTX, "has_cls": has_cls}


def speed_cells(times_ms: list[float], ratio: Ratio | None) -> str:
    """A row's speed columns: median ms (p20-p80 over rounds), then the speed-up over the reference
    with its spread, or a note where the rounds disagree too much to read it."""
    timing = summarise(times_ms)
    cells = f"{timing.median_ms:>9.3f} ({timing.p20_ms:.3f}-{timing.p80_ms:.3f})"
    if ratio is None:
        return f"{cells:>28} {'baseline':>24}"
    if not ratio.readable:
        return f"{cells:>28} {f'{ratio.p20:.1f}-{ratio.p80:.1f}x: too noisy':>24}"
    return f"{cells:>28} {f'{ratio.median:.1f}x ({ratio.p20:.1f}-{ratio.p80:.1f})':>24}"


def check_and_time(device: torch.device, batch: int, dtypes, rounds: int, calls: int) -> bool:
    interpreted = device.type == "cpu" and triton_interpreter_on()
    backends = available_backends(device)
    print(f"device {device}; backends {', '.join(backends)}; batch {batch}; budget {K_DOM}+{K_CTX}")
    print(f"times: median ms per call over {rounds} rounds (p20-p80 across rounds), each round {calls} calls "
          "of every backend in turn; vs reference: the speed-up, round by round, median (p20-p80); "
          f"'too noisy' where its p80 is more than {MAX_RATIO_SPREAD}x its p20 (a loaded machine: rerun)")
    header = (f"{'geometry':11} {'dtype':9} {'backend':9} {'indices':8} {'max error':>10} {'tolerance':>26} "
              f"{'median ms (p20-p80)':>28} {'vs reference':>24}")
    print(header)
    print("-" * len(header))
    all_ok = True
    for geometry in GEOMETRIES:
        for dtype in dtypes:
            inputs = synthetic_inputs(geometry, batch, dtype, device)
            timed = [b for b in backends if not (b == "triton" and interpreted)]
            times = dict(zip(timed, round_medians(
                [lambda b=b: zip_tokens(**inputs, backend=b) for b in timed], device, rounds, calls
            )))
            for backend in backends:
                ok = True
                if backend == "reference":
                    check = f"{'baseline':8} {'-':>10} {'-':>26}"
                else:
                    tokens, dominant_idx = zip_tokens(**inputs, backend=backend)
                    parity = compare_to_reference(tokens, dominant_idx, inputs)
                    check = (f"{'equal' if parity.indices_equal else 'DIFFER':8} {parity.max_error:>10.2e} "
                             f"{parity.tolerance:>26}")
                    ok = parity.ok
                all_ok &= ok
                if backend not in times:
                    speed = f"{'(interpreted: not timed)':>28} {'-':>24}"
                else:
                    ratio = None if backend == "reference" else ratio_per_round(times["reference"], times[backend])
                    speed = speed_cells(times[backend], ratio)
                print(f"{geometry[0]:11} {str(dtype).removeprefix('torch.'):9} {backend:9} {check} "
                      f"{speed}{'' if ok else '  FAILED'}", flush=True)
    return all_ok


def main(argv=None) -> int:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(prog="python -m visionzip_kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu",
                        help="where to check and time (default: cuda if present, else cpu)")
    parser.add_argument("--batch", type=int, default=32 if cuda else 4, help="images per call (default: 32 on a GPU, 4 on the CPU)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    parser.add_argument("--calls", type=int, default=3, help="calls of each backend per round (default 3)")
    args = parser.parse_args(argv)
    dtypes = [torch.float32, torch.float16, torch.bfloat16]
    ok = check_and_time(torch.device(args.device), args.batch, dtypes, args.rounds, args.calls)
    print("all backends agree with the reference" if ok else "SOME BACKENDS DISAGREE WITH THE REFERENCE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
