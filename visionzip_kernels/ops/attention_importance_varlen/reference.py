"""The definition of ``attention_importance_varlen`` in eager PyTorch: per segment, softmax then sum.

For packed queries and keys ``[T_total, H, hd]`` of one attention layer whose segments (images)
attend only within themselves, the importance of key ``j`` of segment ``[s, e)`` is the attention
it receives from the segment's queries, summed over those queries and averaged over heads:

    importance[j] = (1 / H) * sum_h sum_{s <= i < e} softmax_j(q[i, h] . k[s:e, h]^T * scale)

Given ``lse`` ``[H, T_total]`` (the log-sum-exp of each query row of the scaled scores within its
segment, as FlashAttention's varlen kernels return it), the softmax is ``exp(s_ij - lse[h, i])``.
This is the published Qwen2.5-VL statistic before its 2x2 pooling (``merge_units.py``).

Readable, not frugal: each segment's ``[H, T_i, T_i]`` probabilities are materialised. Inputs are
trusted: validation happens once, in ``op.py``.
"""
from __future__ import annotations

import torch


def attention_importance_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    cu_seqlens: torch.Tensor,
    seqlens: list[int],
    scale: float,
    lse: torch.Tensor | None = None,
    accum_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Importance ``[T_total]`` in ``accum_dtype``; q, k ``[T_total, H, hd]``, segments of
    ``seqlens`` tokens (``cu_seqlens`` is not read: the op checked that it agrees)."""
    importance = torch.zeros(q.shape[0], dtype=accum_dtype, device=q.device)
    start = 0
    for size in seqlens:
        stop = start + size
        queries = q[start:stop].to(accum_dtype).transpose(0, 1)
        keys = k[start:stop].to(accum_dtype).transpose(0, 1)
        scores = torch.matmul(queries, keys.transpose(1, 2)) * scale
        if lse is None:
            probs = torch.softmax(scores, dim=-1)
        else:
            probs = torch.exp(scores - lse[:, start:stop, None].to(accum_dtype))
        importance[start:stop] = probs.sum(dim=1).mean(dim=0)
        start = stop
    return importance
