"""Packed, variable-length inputs and the parity check that every varlen test shares.

``make_packed`` draws a seeded random packed batch (never zeros) of segments of the given sizes;
``assert_zip_varlen_matches_reference`` holds a backend's ``zip_tokens_varlen`` output to the
reference: kept indices and offsets exactly equal; float32 tokens within ``1e-5 + 1e-5 * |ref|``
of the float32 reference; float16/bfloat16 tokens no further from a float64 evaluation of the same
plan than twice the error of the reference run entirely in that precision.
"""
from __future__ import annotations

import torch

from visionzip_kernels.ops.zip_tokens_varlen import reference
from visionzip_kernels.testing.parity import FLOAT32_ATOL, FLOAT32_RTOL
from visionzip_kernels.varlen import offsets

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Segment sizes that are not powers of two, a one-token image among them.
SIZES = (37, 1, 90, 13, 64 + 7)


def make_packed(sizes, width, key_dim, dtype, seed, with_keys=True, heads=None, head_dim=None) -> dict:
    """hidden ``[T, width]``, importance ``[T]`` float32 > 0, keys ``[T, key_dim]`` (or None) and,
    with ``heads``, q/k ``[T, heads, head_dim]``; cu_seqlens int32 on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    total = sum(sizes)
    packed = {
        "hidden": torch.randn(total, width, generator=gen).to(dtype),
        "importance": torch.rand(total, generator=gen) + 0.01,
        "keys": torch.randn(total, key_dim, generator=gen).to(dtype) if with_keys else None,
        "cu_seqlens": torch.tensor(offsets(list(sizes)), dtype=torch.int32),
        "seqlens": list(sizes),
    }
    if heads is not None:
        packed["q"] = torch.randn(total, heads, head_dim, generator=gen).mul(2).to(dtype)
        packed["k"] = torch.randn(total, heads, head_dim, generator=gen).mul(2).to(dtype)
    return packed


def assert_zip_varlen_matches_reference(outputs, packed, k_dom, k_ctx) -> None:
    """``outputs`` = ``(tokens, kept_idx, cu_kept)`` of a backend on ``packed`` with per-segment
    budgets ``k_dom``, ``k_ctx`` (lists), against the reference."""
    tokens, kept_idx, cu_kept = (tensor.cpu() for tensor in outputs)
    hidden = packed["hidden"]
    args = (packed["importance"], packed["cu_seqlens"], packed["seqlens"], k_dom, k_ctx, packed["keys"])
    expected, expected_idx, expected_cu = reference.zip_tokens_varlen(hidden, *args)
    assert kept_idx.dtype == torch.int64 and cu_kept.dtype == torch.int64
    assert torch.equal(kept_idx, expected_idx), "kept indices differ from the reference"
    assert torch.equal(cu_kept, expected_cu), "cu_kept differs from the reference"
    assert tokens.shape == expected.shape and tokens.dtype == hidden.dtype
    if hidden.dtype == torch.float32:
        torch.testing.assert_close(tokens, expected, atol=FLOAT32_ATOL, rtol=FLOAT32_RTOL)
        return
    exact = reference.zip_tokens_varlen(hidden.double(), *args, accum_dtype=torch.float64)[0]
    low = reference.zip_tokens_varlen(hidden, *args, accum_dtype=hidden.dtype)[0]
    error = (tokens.double() - exact).abs().max().item() if tokens.numel() else 0.0
    bound = 2 * (low.double() - exact).abs().max().item() if tokens.numel() else 0.0
    assert error <= bound, f"max error {error:.3e} exceeds 2x the {hidden.dtype} reference's {bound:.3e}"
