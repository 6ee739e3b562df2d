"""The published VisionZip selection and merge, as eager PyTorch: the baseline users run today.

A faithful port of the token selection in ``CLIPVisionTower_VisionZip.forward`` of the code
published with the paper (boolean masks, ``masked_select``, ``torch.isin``, a one-hot ``bmm``),
kept as a benchmark provider and a second, independent check of the reference. It reads the CLS
query's row of the attention map, so it is defined for encoders with a CLS token only, and it
inherits the published code's limits: ``topk`` ties are not ordered, a zero key gives NaN, and
``masked_select`` synchronises the host on a GPU.
"""
from __future__ import annotations

import torch


def published_zip_tokens(
    hidden: torch.Tensor, attn: torch.Tensor, k_dom: int, k_ctx: int, metric: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Published VisionZip on one layer's outputs.

    hidden: ``[B, N, D]``; attn: ``[B, H, N, N]`` probabilities (or the ``[B, H, N]`` CLS row);
    metric: ``[B, N, Dk]`` head-averaged keys. ``k_dom`` counts the CLS token, as in the
    published ``visionzip(model, dominant=k_dom, contextual=k_ctx)``.
    Returns ``(tokens [B, k_dom + k_ctx, D], dominant_idx [B, k_dom])`` like ``zip_tokens``.
    """
    dominant_num = k_dom - 1
    contextual_num = k_ctx
    cls_attention = attn[:, :, 0, 1:] if attn.dim() == 4 else attn[:, :, 1:]
    cls_attention_sum = cls_attention.sum(dim=1)
    topk_indices = cls_attention_sum.topk(dominant_num, dim=1).indices + 1
    cls_index = torch.zeros((hidden.shape[0], 1), dtype=topk_indices.dtype, device=topk_indices.device)
    all_indices = torch.cat([cls_index, topk_indices], dim=1)

    mask = torch.ones_like(hidden[:, :, 0], dtype=torch.bool).scatter_(1, all_indices, False)
    dominant_tokens = hidden.masked_select(~mask.unsqueeze(-1)).view(
        hidden.shape[0], dominant_num + 1, hidden.shape[2]
    )
    if contextual_num == 0:
        return dominant_tokens, all_indices.sort(dim=1).values

    metric_filtered = metric[mask].view(hidden.shape[0], hidden.shape[1] - (dominant_num + 1), metric.shape[2])
    hidden_filtered = hidden.masked_select(mask.unsqueeze(-1)).view(
        hidden.shape[0], hidden.shape[1] - (dominant_num + 1), hidden.shape[2]
    )
    metric_normalized = metric_filtered / metric_filtered.norm(dim=-1, keepdim=True)

    step = max(1, metric_normalized.shape[1] // contextual_num)
    target_indices = torch.arange(0, metric_normalized.shape[1], step, device=metric_normalized.device)[:contextual_num]
    target_tokens = metric_normalized[:, target_indices, :]
    positions = torch.arange(metric_normalized.shape[1], device=metric_normalized.device)
    tokens_to_merge = metric_normalized[:, ~torch.isin(positions, target_indices), :]
    similarity = torch.bmm(tokens_to_merge, target_tokens.transpose(1, 2))
    assign_one_hot = torch.zeros(
        tokens_to_merge.shape[0], tokens_to_merge.shape[1], contextual_num,
        dtype=hidden_filtered.dtype, device=metric_normalized.device,
    )
    assign_one_hot.scatter_(2, similarity.argmax(dim=2).unsqueeze(-1), 1)
    counts = assign_one_hot.sum(dim=1).clamp(min=1).unsqueeze(-1)
    hidden_to_merge = hidden_filtered[:, ~torch.isin(positions, target_indices), :]
    aggregated_hidden = torch.bmm(assign_one_hot.transpose(1, 2), hidden_to_merge) / counts
    target_hidden = hidden_filtered[:, target_indices, :]
    contextual_tokens = target_hidden + aggregated_hidden
    tokens = torch.cat([dominant_tokens, contextual_tokens], dim=1).to(hidden.dtype)
    return tokens, all_indices.sort(dim=1).values
