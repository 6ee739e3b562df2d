"""Triton kernels of ``attention_importance_varlen``, flash-style, never a ``T_i x T_i`` buffer.

For packed ``[T_total, H, hd]`` queries and keys read through their strides, token ``t`` of
segment ``[lo, hi)`` (``cu_seqlens``) attends to keys ``lo <= j < hi`` only. Two passes, each a
grid over (blocks of the packed sequence, heads):

1. ``_row_lse_kernel``: for a block of query rows, the log-sum-exp of each row's scaled scores over
   its own segment's keys (online max and sum over key blocks; skipped when ``lse`` is given);
2. ``_column_sum_kernel``: for a block of keys, the sum over each key's segment's queries of
   ``exp(s_ij - lse_i)``, written per head; the mean over heads is taken after.

A block may straddle segments: every row (column) carries its own segment bounds, found from
``cu_seqlens`` on the device (a loop over the ``n`` segments), and the loop runs over the union
of the block's segments with a per-row (per-column) mask. No size is read on the host, so the grid
depends on ``T_total`` and ``H`` only. Float32 throughout (dot products accumulate in float32 with
IEEE float32 products, never TF32); the extra memory is the ``[H, T_total]`` log-sum-exp and column
sums.

``attention_importance_varlen_triton`` is the kernel of ``visionzip::_attention_importance_varlen_triton``
(registered in ``op.py``), for CUDA tensors and, under Triton's interpreter, CPU tensors alike.
Inputs are trusted: validation happens once, in ``op.py``.
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from ..attention_importance.triton import _tile
from ..triton_math import dot_f32, helper

# 64 x 64 score tiles, as attention_importance's kernels: tensor-core sized, and a tile of q, k and
# scores stays in registers for head dims up to 128 with 4 warps.
BLOCK_ROWS = 64
NUM_WARPS = 4


@helper
def _segment_bounds(cu_ptr, n_segments, tok, total):
    """``(lo, hi)`` of the segment holding each token ``tok`` (``0, 0`` for ``tok >= total``)."""
    lo = tl.zeros(tok.shape, tl.int64)
    hi = tl.zeros(tok.shape, tl.int64)
    for s in range(0, n_segments):
        seg_lo = tl.load(cu_ptr + s)
        seg_hi = tl.load(cu_ptr + s + 1)
        inside = (tok >= seg_lo) & (tok < seg_hi) & (tok < total)
        lo = tl.where(inside, seg_lo, lo)
        hi = tl.where(inside, seg_hi, hi)
    return lo, hi


@triton.jit
def _row_lse_kernel(
    q_ptr, k_ptr, cu_ptr, lse_ptr,
    total, n_segments, head_dim, scale,
    stride_qt, stride_qh, stride_qd,
    stride_kt, stride_kh, stride_kd,
    stride_lh, stride_lt,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """lse[h, i] = log(sum_{j in seg(i)} exp(s_ij)) for the BLOCK_M query rows of one program."""
    head = tl.program_id(1).to(tl.int64)
    offs_m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < total
    lo, hi = _segment_bounds(cu_ptr, n_segments, offs_m, total)
    first_key = tl.min(tl.where(row_ok, lo, total), axis=0)
    last_key = tl.max(tl.where(row_ok, hi, 0), axis=0)

    q = _tile(q_ptr + head * stride_qh, offs_m, total, stride_qt, offs_d, head_dim, stride_qd)
    k_base = k_ptr + head * stride_kh
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    for start in range(first_key, last_key, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        k = _tile(k_base, offs_n, last_key, stride_kt, offs_d, head_dim, stride_kd)
        in_segment = (offs_n[None, :] >= lo[:, None]) & (offs_n[None, :] < hi[:, None])
        scores = dot_f32(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32)) * scale
        scores = tl.where(in_segment, scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        # A row with no key of its segment in this block (or none yet) keeps max = -inf: no NaN.
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
        row_sum = row_sum * tl.exp(row_max - safe_max) + tl.sum(tl.exp(scores - safe_max[:, None]), axis=1)
        row_max = new_max
    # Rows past T_total have no keys (row_sum = 0); they are not stored.
    lse = row_max + tl.log(tl.where(row_ok, row_sum, 1.0))
    tl.store(lse_ptr + head * stride_lh + offs_m * stride_lt, lse, mask=row_ok)


@triton.jit
def _column_sum_kernel(
    q_ptr, k_ptr, cu_ptr, lse_ptr, out_ptr,
    total, n_segments, head_dim, scale,
    stride_qt, stride_qh, stride_qd,
    stride_kt, stride_kh, stride_kd,
    stride_lh, stride_lt,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """out[h, j] = sum_{i in seg(j)} exp(s_ij - lse[h, i]) for the BLOCK_N keys of one program."""
    head = tl.program_id(1).to(tl.int64)
    offs_n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    key_ok = offs_n < total
    lo, hi = _segment_bounds(cu_ptr, n_segments, offs_n, total)
    first_query = tl.min(tl.where(key_ok, lo, total), axis=0)
    last_query = tl.max(tl.where(key_ok, hi, 0), axis=0)

    k = _tile(k_ptr + head * stride_kh, offs_n, total, stride_kt, offs_d, head_dim, stride_kd)
    q_base = q_ptr + head * stride_qh
    lse_base = lse_ptr + head * stride_lh
    column_sum = tl.zeros([BLOCK_N], tl.float32)
    for start in range(first_query, last_query, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        row_ok = offs_m < last_query
        q = _tile(q_base, offs_m, last_query, stride_qt, offs_d, head_dim, stride_qd)
        row_lse = tl.load(lse_base + offs_m * stride_lt, mask=row_ok, other=0.0)
        in_segment = (offs_m[:, None] >= lo[None, :]) & (offs_m[:, None] < hi[None, :])
        scores = dot_f32(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32)) * scale
        column_sum += tl.sum(tl.where(in_segment, tl.exp(scores - row_lse[:, None]), 0.0), axis=0)
    tl.store(out_ptr + head * total + offs_n, column_sum, mask=key_ok)


def attention_importance_varlen_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    cu_seqlens: torch.Tensor,
    seqlens: list[int],
    scale: float,
    *,
    lse: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Importance ``[T_total]`` float32; q, k ``[T_total, H, hd]``, lse ``None`` or ``[H, T_total]``.

    ``seqlens`` is not read (the grid needs ``T_total`` alone); ``cu_seqlens`` is used on the
    device, as int64 (copied there when it is on the CPU).
    """
    total, heads, head_dim = q.shape
    importance = torch.zeros(total, dtype=torch.float32, device=q.device)
    if total == 0:
        return importance
    offsets = cu_seqlens.to(device=q.device, dtype=torch.int64)
    n_segments = offsets.shape[0] - 1
    block_d = max(16, triton.next_power_of_2(head_dim))  # tl.dot needs a power of two >= 16
    grid = (triton.cdiv(total, BLOCK_ROWS), heads)
    common = (total, n_segments, head_dim, scale, *q.stride(), *k.stride())
    tiles = dict(BLOCK_M=BLOCK_ROWS, BLOCK_N=BLOCK_ROWS, BLOCK_D=block_d, num_warps=NUM_WARPS)
    if lse is None:
        lse = torch.empty(heads, total, dtype=torch.float32, device=q.device)
        _row_lse_kernel[grid](q, k, offsets, lse, *common, *lse.stride(), **tiles)
    per_head = torch.empty(heads, total, dtype=torch.float32, device=q.device)
    _column_sum_kernel[grid](q, k, offsets, lse, per_head, *common, *lse.stride(), **tiles)
    return per_head.mean(dim=0)
