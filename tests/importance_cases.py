"""Inputs and the parity check that every backend's attention_importance tests share.

``make_case`` draws seeded q, k the way the encoder produces them: ``[B, N, H, hd]`` projections
viewed as ``[B, H, N, hd]`` (token-major, not contiguous), with their float64 truth.
``check_parity`` holds a backend to ``softmax(q k^T scale)`` evaluated in float64 on the same
inputs: the CLS query's row, or the mean over queries of each column. Tolerance: ``rtol = 2e-5``,
``atol = 1e-9`` for all three input dtypes, since every backend computes in float32 and
float16/bfloat16 products are exact in float32 (the error is float32 rounding of the scores,
exponentials and sums).
"""
from __future__ import annotations

import functools

import torch

from visionzip_kernels import attention_importance

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TOKENS = (5, 65, 577, 729, 1025)
HEAD_DIMS = (64, 72, 80, 128)
RTOL, ATOL = 2e-5, 1e-9


def batch_heads(n_tokens: int) -> tuple[int, int]:
    """Two images of three heads, one image of two heads at N = 1025."""
    return (1, 2) if n_tokens > 1000 else (2, 3)


@functools.lru_cache(maxsize=None)
def make_case(batch: int, heads: int, n_tokens: int, head_dim: int, dtype: torch.dtype, seed: int = 0):
    """Seeded q, k ``[B, H, N, hd]`` (token-major views) and the float64 truth.

    Returns ``(q, k, exact_cls, exact_mean, lse)``: the CLS row and the column mean ``[B, H, N]``
    float64, and the per-row log-sum-exp ``[B, H, N]`` float32, all from the rounded inputs.
    Scores have a standard deviation of about 2, so the softmax rows are far from uniform.
    """
    gen = torch.Generator().manual_seed(seed)
    q, k = (
        torch.randn(batch, n_tokens, heads, head_dim, generator=gen).mul(1.4).to(dtype).transpose(1, 2)
        for _ in range(2)
    )
    scores = q.double() @ k.double().transpose(-1, -2) * head_dim**-0.5
    probs = scores.softmax(dim=-1)
    return q, k, probs[:, :, 0], probs.mean(dim=2), torch.logsumexp(scores, dim=-1).float()


def exact_importance(q: torch.Tensor, k: torch.Tensor, has_cls: bool, scale: float | None = None) -> torch.Tensor:
    """The float64 importance ``[B, H, N]`` of any q, k (on the CPU)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    probs = (q.cpu().double() @ k.cpu().double().transpose(-1, -2) * scale).softmax(dim=-1)
    return probs[:, :, 0] if has_cls else probs.mean(dim=2)


def check_parity(backend, device, n_tokens, head_dim, dtype, has_cls, with_lse, shape=None):
    batch, heads = shape or batch_heads(n_tokens)
    q, k, exact_cls, exact_mean, lse = make_case(batch, heads, n_tokens, head_dim, dtype)
    q, k, lse = q.to(device), k.to(device), lse.to(device)
    out = attention_importance(q, k, has_cls, lse=lse if with_lse else None, backend=backend)
    assert out.dtype == torch.float32
    assert out.shape == (batch, heads, n_tokens)
    assert out.device == q.device
    exact = exact_cls if has_cls else exact_mean
    torch.testing.assert_close(out.cpu().double(), exact, rtol=RTOL, atol=ATOL)
