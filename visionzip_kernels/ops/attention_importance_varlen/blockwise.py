"""``attention_importance_varlen`` in PyTorch over blocks of query rows: the ``"blockwise"`` backend.

Computes what ``reference.py`` defines one segment at a time, each segment's queries a block of
rows at a time (at most ``QUERY_BLOCK_ROWS`` rows, as ``attention_importance``'s blockwise
backend), so the largest buffer is one block of scores ``[H, rows, T_i]``, never ``T_i x T_i``
once ``T_i > 64``. Float32 throughout (float16 and bfloat16 products are exact in float32). The
segment loop runs on the host over ``seqlens``; inputs are trusted: validation happens in ``op.py``.
"""
from __future__ import annotations

import torch

from ..attention_importance.blockwise import query_block_rows


def attention_importance_varlen_blockwise(
    q: torch.Tensor,
    k: torch.Tensor,
    cu_seqlens: torch.Tensor,
    seqlens: list[int],
    scale: float,
    lse: torch.Tensor | None = None,
) -> torch.Tensor:
    """Importance ``[T_total]`` float32; q, k ``[T_total, H, hd]``, lse ``None`` or ``[H, T_total]``."""
    heads = q.shape[1]
    importance = torch.zeros(q.shape[0], dtype=torch.float32, device=q.device)
    start = 0
    for size in seqlens:
        stop = start + size
        if size == 0:
            continue
        # [H, T_i, hd] copies, once per segment: batched products of strided slices copy per block.
        queries = q[start:stop].transpose(0, 1).float().contiguous()
        keys_t = k[start:stop].transpose(0, 1).float().contiguous().transpose(1, 2)
        rows = query_block_rows(heads, size)
        column_sums = torch.zeros(heads, size, dtype=torch.float32, device=q.device)
        for first in range(0, size, rows):
            last = min(first + rows, size)
            block = torch.bmm(queries[:, first:last], keys_t).mul_(scale)
            if lse is None:
                probs = torch.softmax(block, dim=2)
            else:
                probs = block.sub_(lse[:, start + first : start + last, None]).exp_()
            column_sums += probs.sum(dim=1)
        importance[start:stop] = column_sums.sum(dim=0) / heads
        start = stop
    return importance
