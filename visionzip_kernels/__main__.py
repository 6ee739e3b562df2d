"""``python -m visionzip_kernels``, the self-check: every backend against the reference, then timed.

On built-in synthetic inputs at CLIP-L/336 (577 tokens with CLS, width 1024, 16 heads of 64) and
SigLIP-SO400M/384 (729 tokens without CLS, width 1152, 16 heads of 72) shapes, with the attention
rows and per-head keys that the package's encoder path produces and the paper's 54 + 10 budget:
each available backend's output is compared with the reference (dominant indices exactly, values
under ``testing/parity.py``'s tolerances) and its median time per call is printed beside the
speed-up over the reference, which is timed as the baseline and not compared with itself. Exits
non-zero if any backend disagrees with the reference. Backends run by Triton's interpreter are
checked but not timed.
"""
from __future__ import annotations

import argparse
import sys

import torch

from . import available_backends, zip_tokens
from .backends import triton_interpreter_on
from .testing.parity import compare_to_reference
from .testing.timing import time_calls

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


def check_and_time(device: torch.device, batch: int, dtypes) -> bool:
    interpreted = device.type == "cpu" and triton_interpreter_on()
    backends = available_backends(device)
    print(f"device {device}; backends {', '.join(backends)}; batch {batch}; budget {K_DOM}+{K_CTX}")
    header = (f"{'geometry':11} {'dtype':9} {'backend':9} {'indices':8} {'max error':>10} {'tolerance':>26} "
              f"{'median ms':>10} {'vs reference':>13}")
    print(header)
    print("-" * len(header))
    all_ok = True
    for geometry in GEOMETRIES:
        for dtype in dtypes:
            inputs = synthetic_inputs(geometry, batch, dtype, device)
            reference_ms = time_calls(lambda: zip_tokens(**inputs, backend="reference"), [()], device).median_ms
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
                if backend == "triton" and interpreted:
                    speed = f"{'(interp.)':>10} {'-':>13}"
                else:
                    median = reference_ms if backend == "reference" else time_calls(
                        lambda: zip_tokens(**inputs, backend=backend), [()], device
                    ).median_ms
                    speed = f"{median:>10.3f} {reference_ms / median:>12.1f}x"
                print(f"{geometry[0]:11} {str(dtype).removeprefix('torch.'):9} {backend:9} {check} "
                      f"{speed}{'' if ok else '  FAILED'}")
    return all_ok


def main(argv=None) -> int:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(prog="python -m visionzip_kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--batch", type=int, default=32 if cuda else 4)
    args = parser.parse_args(argv)
    dtypes = [torch.float32, torch.float16, torch.bfloat16]
    ok = check_and_time(torch.device(args.device), args.batch, dtypes)
    print("all backends agree with the reference" if ok else "SOME BACKENDS DISAGREE WITH THE REFERENCE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
