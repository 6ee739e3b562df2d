"""``attention_importance`` in PyTorch over blocks of query rows: the ``"blockwise"`` backend.

Computes what ``reference.py`` defines without the ``[B, H, N, N]`` probabilities: the
queries (the CLS query alone, or all ``N``) are taken a block of rows at a time; each block's
scores ``[B*H, rows, N]`` are complete rows, so their softmax (or ``exp(s_ij - lse_i)`` with the
given ``lse``) and its contribution to the column sums come from that block alone. The column
sums are divided by the number of queries at the end.

Float32 throughout: q and k are upcast once (float16 and bfloat16 products are exact in float32),
the scores, exponentials and column sums are float32. Inputs are trusted: validation happens once,
in ``op.py``.
"""
from __future__ import annotations

import torch

# At most 64 query rows per block: no buffer is N x N once N > 64, and on CPU 64-row blocks ran
# as fast as 128 or 256 and up to twice as fast as the whole map at once (N = 577 and 729, 16
# heads). A block's scores also stay under 16M float32 (64 MiB), so a very large batch takes
# fewer rows per block.
QUERY_BLOCK_ROWS = 64
SCORE_BLOCK_ELEMENTS = 1 << 24


def query_block_rows(batch_heads: int, n_tokens: int) -> int:
    """Query rows per block for ``batch_heads`` score matrices of ``n_tokens`` keys."""
    return max(1, min(QUERY_BLOCK_ROWS, SCORE_BLOCK_ELEMENTS // (batch_heads * n_tokens)))


def attention_importance_blockwise(
    q: torch.Tensor,
    k: torch.Tensor,
    has_cls: bool,
    scale: float,
    lse: torch.Tensor | None = None,
) -> torch.Tensor:
    """Importance ``[B, H, N]`` float32; q, k ``[B, H, N, hd]``, lse ``None`` or ``[B, H, N]``.

    The largest buffer is one block of scores, ``[B*H, rows, N]`` with ``rows`` from
    ``query_block_rows`` (1 with a CLS token).
    """
    batch, heads, n_tokens, head_dim = q.shape
    batch_heads = batch * heads
    n_queries = 1 if has_cls else n_tokens
    keys_t = k.reshape(batch_heads, n_tokens, head_dim).float().transpose(1, 2)
    queries = q[:, :, :n_queries].reshape(batch_heads, n_queries, head_dim).float()
    query_lse = None if lse is None else lse[:, :, :n_queries].reshape(batch_heads, n_queries, 1)
    rows = query_block_rows(batch_heads, n_tokens)

    # Few, large ops per block (one product, one softmax, one sum): each is a parallel region.
    scores = torch.empty(batch_heads, min(rows, n_queries), n_tokens, dtype=torch.float32, device=q.device)
    column_sums = torch.zeros(batch_heads, n_tokens, dtype=torch.float32, device=q.device)
    for start in range(0, n_queries, rows):
        stop = min(start + rows, n_queries)
        block = scores[:, : stop - start].baddbmm_(queries[:, start:stop], keys_t, beta=0.0, alpha=scale)
        if query_lse is None:
            probs = torch.softmax(block, dim=2)
        else:
            probs = block.sub_(query_lse[:, start:stop]).exp_()
        column_sums += probs.sum(dim=1)
    return column_sums.div_(n_queries).view(batch, heads, n_tokens)
