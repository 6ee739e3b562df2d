"""Inputs and the parity check that every backend's zip_tokens tests share.

A ``ZipCase`` describes one geometry (batch, tokens, width, heads, budgets, layouts); ``make_inputs``
draws fresh seeded random inputs for it (never zeros); ``assert_matches_reference`` holds a
backend's output to ``visionzip_kernels.reference``: indices exactly equal, values within the
stated tolerance.

Tolerances (``visionzip_kernels.parity``): float32 outputs within ``1e-5 + 1e-5 * |ref|`` of the
float32 reference; float16 and bfloat16 outputs no further from a float64 evaluation of the same
plan than twice the error of the reference run entirely in that low precision.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from visionzip_kernels.testing.parity import compare_to_reference

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ATTN_LAYOUTS = ("full", "rows", "scores")  # [B, H, N, N], [B, H, N], [B, N]
KEY_LAYOUTS = ("avg", "heads", "none")  # [B, N, Dk], [B, H, N, hd], None


@dataclass(frozen=True)
class ZipCase:
    batch: int
    n_tokens: int
    width: int
    heads: int
    head_dim: int
    k_dom: int
    k_ctx: int
    has_cls: bool = True
    attn_layout: str = "rows"
    key_layout: str = "avg"

    def __str__(self) -> str:
        cls = "cls" if self.has_cls else "nocls"
        return (
            f"B{self.batch}-N{self.n_tokens}-D{self.width}-H{self.heads}-hd{self.head_dim}-"
            f"{self.k_dom}+{self.k_ctx}-{cls}-{self.attn_layout}-{self.key_layout}"
        )


def make_inputs(case: ZipCase, dtype: torch.dtype, device="cpu", seed: int = 0) -> dict:
    """Random ``hidden``, ``attn`` and ``keys`` for ``case``: softmax probabilities, normal values."""
    gen = torch.Generator().manual_seed(seed)
    b, n, h = case.batch, case.n_tokens, case.heads
    hidden = torch.randn(b, n, case.width, generator=gen)
    if case.attn_layout == "full":
        attn = torch.randn(b, h, n, n, generator=gen).mul(3).softmax(-1)
    elif case.attn_layout == "rows":
        attn = torch.randn(b, h, n, generator=gen).mul(3).softmax(-1)
    else:
        attn = torch.rand(b, n, generator=gen) + 0.01
    if case.key_layout == "avg":
        keys = torch.randn(b, n, case.head_dim, generator=gen)
    elif case.key_layout == "heads":
        keys = torch.randn(b, h, n, case.head_dim, generator=gen)
    else:
        keys = None
    to = dict(dtype=dtype, device=device)
    return {
        "hidden": hidden.to(**to),
        "attn": attn.to(**to),
        "keys": None if keys is None else keys.to(**to),
        "k_dom": case.k_dom,
        "k_ctx": case.k_ctx,
        "has_cls": case.has_cls,
    }


def assert_matches_reference(tokens: torch.Tensor, dominant_idx: torch.Tensor, inputs: dict) -> None:
    """A backend's ``(tokens, dominant_idx)`` against the reference, under ``parity``'s tolerances."""
    assert dominant_idx.dtype == torch.int64
    parity = compare_to_reference(tokens, dominant_idx, inputs)
    assert parity.indices_equal, "dominant indices differ from the reference"
    assert parity.within_tolerance, f"max error {parity.max_error:.3e} exceeds {parity.tolerance}"


# CLIP-L/336 (N=577, 16 heads of 64, width 1024) and SigLIP-SO400M/384 (N=729, no CLS,
# 16 heads of 72, width 1152) at the paper's budgets.
MODEL_CASES = [
    ZipCase(2, 577, 1024, 16, 64, 54, 10),
    ZipCase(1, 577, 1024, 16, 64, 108, 20, attn_layout="full"),
    ZipCase(3, 577, 1024, 16, 64, 162, 30, key_layout="heads"),
    ZipCase(2, 729, 1152, 16, 72, 54, 10, has_cls=False),
    ZipCase(1, 729, 1152, 16, 72, 108, 20, has_cls=False, attn_layout="full", key_layout="heads"),
    ZipCase(8, 577, 1024, 16, 64, 54, 10, key_layout="none"),
]

# Small odd geometries over every layout, with and without a CLS token.
SMALL_CASES = [
    ZipCase(batch, n, width, heads, hd, k_dom, k_ctx, has_cls, attn_layout, key_layout)
    for (batch, n, width, heads, hd, k_dom, k_ctx), has_cls, attn_layout, key_layout in itertools.product(
        [(1, 5, 7, 2, 3, 2, 1), (3, 33, 40, 3, 12, 6, 4), (2, 70, 96, 4, 16, 9, 7)],
        (True, False),
        ATTN_LAYOUTS,
        KEY_LAYOUTS,
    )
]

# Budgets at the edges of the target/merge split (N=61, so M = 61 - k_dom).
EDGE_CASES = [
    ZipCase(2, 61, 48, 4, 16, 9, 0),  # k_ctx = 0: dominant tokens only
    ZipCase(2, 61, 48, 4, 16, 40, 21),  # k_dom + k_ctx = N: every remaining token a target
    ZipCase(2, 61, 48, 4, 16, 31, 16),  # M // k_ctx == 1 (M = 30)
    ZipCase(2, 61, 48, 4, 16, 30, 20, has_cls=False),  # M < 2 * k_ctx (M = 31)
    ZipCase(2, 61, 48, 4, 16, 1, 5),  # the CLS token alone is dominant
    ZipCase(2, 61, 48, 4, 16, 1, 0, has_cls=False),  # one dominant token, nothing merged
    ZipCase(2, 61, 48, 4, 16, 20, 1, key_layout="heads"),  # one target takes every merge token
]
