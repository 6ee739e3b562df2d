"""The PyTorch reference of ``zip_tokens_varlen``: ``zip_tokens``' contract per segment, in raster order.

Each segment (one image) of the packed batch is planned by ``zip_tokens``' reference
(:func:`..zip_tokens.reference.plan_zip`) with its importance as the head-reduced ``[1, T_i]``
scores, no CLS token, and its keys (or hidden states) as the metric: the same top-k, target split,
unit keys and similarity argmax, evaluated in the contract's fixed float32 order. The kept tokens
are then the dominant tokens and the targets together, in ascending index order, a target's row
being ``hidden[target] + mean(hidden[merged])`` (float32, rounded once), which is the published
Qwen2.5-VL output order. Readable first: a Python loop over segments. Inputs are trusted:
validation happens once, in ``op.py``.
"""
from __future__ import annotations

import torch

from ...varlen import kept_offsets
from ..zip_tokens.reference import ZipPlan, gather_tokens, plan_zip


def kept_rows(hidden: torch.Tensor, plan: ZipPlan, accum_dtype: torch.dtype = torch.float32):
    """``(rows [K, D], kept_idx [K])`` of one segment ``hidden`` ``[T, D]`` from its one-image plan,
    kept tokens in ascending index order, each target's row ``hidden[target] + mean(merged)``
    accumulated in ``accum_dtype`` and rounded once to ``hidden``'s dtype."""
    dominant_idx, target_idx = plan.dominant_idx[0], plan.target_idx[0]
    k_ctx = target_idx.shape[0]
    if k_ctx == 0:
        return hidden[dominant_idx], dominant_idx
    width = hidden.shape[1]
    hidden_accum = hidden.to(accum_dtype)
    sums = torch.zeros(k_ctx, width, dtype=accum_dtype, device=hidden.device)
    sums.index_add_(0, plan.merge_assign[0], hidden_accum[plan.merge_idx[0]])
    counts = torch.zeros(k_ctx, dtype=accum_dtype, device=hidden.device)
    counts.index_add_(0, plan.merge_assign[0], torch.ones_like(plan.merge_assign[0], dtype=accum_dtype))
    contextual = hidden_accum[target_idx] + sums / counts.clamp(min=1).unsqueeze(-1)
    rows = torch.cat([hidden[dominant_idx], contextual.to(hidden.dtype)])
    kept_idx = torch.cat([dominant_idx, target_idx])
    order = kept_idx.argsort()
    return rows[order], kept_idx[order]


def plan_segment(importance: torch.Tensor, metric: torch.Tensor, k_dom: int, k_ctx: int) -> ZipPlan:
    """``zip_tokens``' plan for one segment: importance ``[T]``, metric ``[T, Dk]`` float32."""
    return plan_zip(importance[None].float(), metric[None], k_dom, k_ctx, has_cls=False)


def zip_tokens_varlen(
    hidden: torch.Tensor,
    importance: torch.Tensor,
    cu_seqlens: torch.Tensor,
    seqlens: list[int],
    k_dom: list[int],
    k_ctx: list[int],
    keys: torch.Tensor | None = None,
    accum_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference ``zip_tokens_varlen``: ``(tokens [K_total, D], kept_idx [K_total] int64, cu_kept [n + 1] int64)``.

    hidden ``[T_total, D]``; importance ``[T_total]``; keys ``[T_total, Dk]`` or ``None``; segment
    ``i`` holds ``seqlens[i]`` tokens from ``sum(seqlens[:i])`` (``cu_seqlens`` is not read: the
    op checked that it agrees) and keeps ``k_dom[i] + k_ctx[i]`` of them.
    """
    metric = (hidden if keys is None else keys).float()
    rows, kept = [], []
    start = 0
    for size, n_dom, n_ctx in zip(seqlens, k_dom, k_ctx):
        stop = start + size
        plan = plan_segment(importance[start:stop], metric[start:stop], n_dom, n_ctx)
        segment_rows, segment_idx = kept_rows(hidden[start:stop], plan, accum_dtype)
        rows.append(segment_rows)
        kept.append(segment_idx + start)
        start = stop
    empty_idx = torch.zeros(0, dtype=torch.int64, device=hidden.device)
    tokens = torch.cat([hidden[:0], *rows]).to(hidden.dtype)
    return tokens, torch.cat([empty_idx, *kept]), kept_offsets(k_dom, k_ctx, hidden.device)
