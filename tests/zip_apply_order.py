"""zip_tokens' output as the CUDA C++ apply kernel (csrc/zip_apply_cuda.cuh) sums it, bit for bit.

The contract leaves the order of the merge sums free; the CUDA kernel fixes one that no launch shape
changes: each target's merge rows in index order, cut into pieces of ``PIECE_ROWS`` rows, each piece
summed from 0 in order, the pieces' sums folded from 0 in piece order; then ``target + sum / count``
in float32, rounded once. Built on the reference's plan, so the indices are the contract's.
"""
from __future__ import annotations

import torch

from visionzip_kernels.ops.zip_tokens import reference

PIECE_ROWS = 8  # kPieceRows in csrc/zip_apply_cuda.cuh


def tokens_in_apply_order(inputs: dict) -> torch.Tensor:
    """``tokens`` ``[B, k_dom + k_ctx, D]`` in hidden's dtype, summed in the apply kernel's order."""
    hidden, k_dom, k_ctx = inputs["hidden"], inputs["k_dom"], inputs["k_ctx"]
    metric = reference.merge_metric(hidden, inputs["keys"])
    plan = reference.plan_zip(inputs["attn"], metric, k_dom, k_ctx, inputs["has_cls"])
    dominant = reference.gather_tokens(hidden, plan.dominant_idx)
    if k_ctx == 0:
        return dominant
    batch, _, width = hidden.shape
    rows = hidden.float()
    context = torch.empty(batch, k_ctx, width, dtype=hidden.dtype, device=hidden.device)
    for b in range(batch):
        for t in range(k_ctx):
            members = plan.merge_idx[b][plan.merge_assign[b] == t]  # ascending, as merge_idx is
            total = torch.zeros(width, dtype=torch.float32, device=hidden.device)
            for start in range(0, members.numel(), PIECE_ROWS):
                piece = torch.zeros_like(total)
                for token in members[start : start + PIECE_ROWS]:
                    piece = piece + rows[b, token]
                total = total + piece
            mean = total / members.numel() if members.numel() else torch.zeros_like(total)
            context[b, t] = (rows[b, plan.target_idx[b, t]] + mean).to(hidden.dtype)
    return torch.cat([dominant, context], dim=1)
