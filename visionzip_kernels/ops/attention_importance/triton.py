"""Triton kernels of ``attention_importance``, flash-style, never an ``N x N`` buffer.

With ``M`` queries (the CLS query alone, ``M = 1``, or all ``N``) the importance of key ``j`` is
``(1 / M) * sum_{i < M} exp(s_ij - lse_i)``, ``s_ij = (q_i . k_j) * scale``, in two passes over
``[B, H, N, hd]`` queries and keys read through their strides (any layout, no copy):

1. ``_row_lse_kernel``: one program per (batch-head, block of query rows) streams the key blocks
   with an online max and sum and writes each row's log-sum-exp (skipped when ``lse`` is given);
2. ``_column_mean_kernel``: one program per (batch-head, block of keys) streams the query blocks
   and accumulates the column sums of ``exp(s_ij - lse_i)``, then divides by ``M``.

Each program holds one tile of scores; the extra memory is the ``[B, H, M]`` log-sum-exp.
Float32 throughout: the dot products accumulate in float32 (float16 and bfloat16 products are
exact in float32; float32 inputs use IEEE float32 products, not TF32), as do the exponentials
and the column sums.

``attention_importance_triton`` is the kernel of ``visionzip::_attention_importance_triton``
(registered in ``op.py``), for CUDA tensors and, under Triton's interpreter, CPU tensors alike.
Inputs are trusted: validation happens once, in ``op.py``.
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from ..triton_math import dot_f32, helper

# 64 x 64 score tiles: big enough for tensor-core dots, small enough to keep a tile of q, k and
# scores in registers for head dims up to 128 with 4 warps.
BLOCK_QUERIES = 64
BLOCK_KEYS = 64
NUM_WARPS = 4
# tl.dot needs at least 16 rows: the single CLS query fills one 16-row tile.
BLOCK_CLS_QUERY = 16


@helper
def _tile(base, rows, n_rows, row_stride, dims, head_dim, dim_stride):
    """Rows ``rows`` (masked below ``n_rows``) x channels ``dims`` (masked below ``head_dim``)
    of one head's ``[N, hd]`` matrix at ``base``; 0 outside."""
    return tl.load(
        base + rows[:, None] * row_stride + dims[None, :] * dim_stride,
        mask=(rows < n_rows)[:, None] & (dims < head_dim)[None, :], other=0.0,
    )


@triton.jit
def _row_lse_kernel(
    q_ptr, k_ptr, lse_ptr,
    n_queries, n_keys, n_heads, head_dim, scale,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_lb, stride_lh, stride_ln,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """lse[b, h, i] = log(sum_j exp(s_ij)) for the BLOCK_M query rows of one program."""
    bh = tl.program_id(0).to(tl.int64)  # 64-bit offsets: q and k may pass 2**31 elements
    batch = bh // n_heads
    head = bh % n_heads
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _tile(q_ptr + batch * stride_qb + head * stride_qh, offs_m, n_queries, stride_qn, offs_d, head_dim, stride_qd)
    k_base = k_ptr + batch * stride_kb + head * stride_kh
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, n_keys, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        k = _tile(k_base, offs_n, n_keys, stride_kn, offs_d, head_dim, stride_kd)
        scores = dot_f32(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32)) * scale
        scores = tl.where((offs_n < n_keys)[None, :], scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        row_sum = row_sum * tl.exp(row_max - new_max) + tl.sum(tl.exp(scores - new_max[:, None]), axis=1)
        row_max = new_max
    tl.store(
        lse_ptr + batch * stride_lb + head * stride_lh + offs_m * stride_ln,
        row_max + tl.log(row_sum),
        mask=offs_m < n_queries,
    )


@triton.jit
def _column_mean_kernel(
    q_ptr, k_ptr, lse_ptr, out_ptr,
    n_queries, n_keys, n_heads, head_dim, scale,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_lb, stride_lh, stride_ln,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """out[b, h, j] = mean_{i < n_queries} exp(s_ij - lse_i) for the BLOCK_N keys of one program."""
    bh = tl.program_id(0).to(tl.int64)  # 64-bit offsets: q and k may pass 2**31 elements
    batch = bh // n_heads
    head = bh % n_heads
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _tile(k_ptr + batch * stride_kb + head * stride_kh, offs_n, n_keys, stride_kn, offs_d, head_dim, stride_kd)
    q_base = q_ptr + batch * stride_qb + head * stride_qh
    lse_base = lse_ptr + batch * stride_lb + head * stride_lh
    column_sum = tl.zeros([BLOCK_N], tl.float32)
    for start in range(0, n_queries, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        q = _tile(q_base, offs_m, n_queries, stride_qn, offs_d, head_dim, stride_qd)
        # A missing row gets lse = +inf, so its exp(s - lse) is 0.
        row_lse = tl.load(lse_base + offs_m * stride_ln, mask=offs_m < n_queries, other=float("inf"))
        scores = dot_f32(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32)) * scale
        column_sum += tl.sum(tl.exp(scores - row_lse[:, None]), axis=0)
    tl.store(out_ptr + bh * n_keys + offs_n, column_sum / n_queries, mask=offs_n < n_keys)


def attention_importance_triton(
    q: torch.Tensor, k: torch.Tensor, has_cls: bool, scale: float, *, lse: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Importance ``[B, H, N]`` float32; q, k ``[B, H, N, hd]``, lse ``None`` or ``[B, H, N]``.

    ``op.py``'s validation (the op is public through ``torch.ops``), then both passes (the first
    only without ``lse``).
    """
    from .op import check_attention_importance_args

    has_cls, scale = check_attention_importance_args(q, k, has_cls, scale, lse)
    batch, heads, n_tokens, head_dim = q.shape
    n_queries = 1 if has_cls else n_tokens
    block_m = BLOCK_CLS_QUERY if n_queries == 1 else BLOCK_QUERIES
    block_d = max(16, triton.next_power_of_2(head_dim))  # tl.dot needs a power of two >= 16
    if lse is None:
        lse = torch.empty(batch, heads, n_queries, dtype=torch.float32, device=q.device)
        _row_lse_kernel[(batch * heads, triton.cdiv(n_queries, block_m))](
            q, k, lse,
            n_queries, n_tokens, heads, head_dim, scale,
            *q.stride(), *k.stride(), *lse.stride(),
            BLOCK_M=block_m, BLOCK_N=BLOCK_KEYS, BLOCK_D=block_d, num_warps=NUM_WARPS,
        )
    importance = torch.empty(batch, heads, n_tokens, dtype=torch.float32, device=q.device)
    _column_mean_kernel[(batch * heads, triton.cdiv(n_tokens, BLOCK_KEYS))](
        q, k, lse, importance,
        n_queries, n_tokens, heads, head_dim, scale,
        *q.stride(), *k.stride(), *lse.stride(),
        BLOCK_M=block_m, BLOCK_N=BLOCK_KEYS, BLOCK_D=block_d, num_warps=NUM_WARPS,
    )
    return importance
