"""The definition of ``attention_importance`` in eager PyTorch: softmax the scores, then average.

For queries ``q`` and keys ``k`` ``[B, H, N, hd]`` of one attention layer and its softmax scale,
the importance of key ``j`` in head ``h`` is

- with a CLS token: the CLS query's attention, ``softmax(q[b, h, 0] . k[b, h]^T * scale)[j]``;
- without one: the mean over the ``N`` queries of the attention they give it,
  ``mean_i softmax(q[b, h, i] . k[b, h]^T * scale)[j]``.

Given ``lse`` ``[B, H, N]``, the log-sum-exp of each query row of the scaled scores, the softmax
is ``exp(s_ij - lse_i)`` with that normaliser instead of one computed here.

Readable, not frugal: without a CLS token this materialises the ``[B, H, N, N]`` probabilities,
which the ``"blockwise"`` and ``"triton"`` backends never do. Inputs are trusted: validation happens
once, in ``op.py``.
"""
from __future__ import annotations

import torch


def attention_importance(
    q: torch.Tensor,
    k: torch.Tensor,
    has_cls: bool,
    scale: float,
    lse: torch.Tensor | None = None,
    accum_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Importance ``[B, H, N]`` in ``accum_dtype`` of every key; q, k ``[B, H, N, hd]``.

    Scores, softmax and mean are all evaluated in ``accum_dtype`` (the tests pass float64 for the
    exact value); ``lse``, where given, is the per-query log-sum-exp ``[B, H, N]``.
    """
    queries = q[:, :, :1] if has_cls else q
    scores = torch.matmul(queries.to(accum_dtype), k.to(accum_dtype).transpose(-1, -2)) * scale
    if lse is None:
        probs = torch.softmax(scores, dim=-1)
    else:
        probs = torch.exp(scores - lse[:, :, : queries.shape[2], None].to(accum_dtype))
    return probs.mean(dim=2)
