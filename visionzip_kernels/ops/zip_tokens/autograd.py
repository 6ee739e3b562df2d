"""The gradient of ``zip_tokens``: with respect to ``hidden`` only.

``tokens`` is linear in ``hidden`` once the plan (``reference.plan_zip``) is fixed: a dominant row
is a copy, a contextual row is ``hidden[target] + mean(hidden[merged])``. So the gradient sends
each dominant row's gradient to its token, each contextual row's gradient to its target, and that
gradient divided by the group's size to each merged token. The indices are not differentiable and
the plan is piecewise constant in ``attn`` and ``keys``, so their gradients are ``None`` (zero);
where ``keys`` is ``None`` the similarity metric is ``hidden`` itself, and it too only decides
indices. The backward pass recomputes the plan with the reference, which every backend matches
bit for bit, instead of keeping it from the forward pass (the backends return only the dominant
indices). It runs in float32 and rounds once to ``hidden``'s dtype.
"""
from __future__ import annotations

import torch

from . import reference


def setup_context(ctx, inputs, output) -> None:
    """Keeps what the plan is recomputed from: ``attn`` and the keys (``hidden`` without keys)."""
    hidden, attn, k_dom, k_ctx, keys, has_cls = inputs
    ctx.budget = (int(k_dom), int(k_ctx), bool(has_cls))
    ctx.hidden_meta = (hidden.shape, hidden.dtype)
    ctx.keys_given = keys is not None
    ctx.save_for_backward(attn, keys if ctx.keys_given else hidden.detach())


def backward(ctx, grad_tokens, grad_dominant_idx):
    """``(grad_hidden, None, None, None, None, None)``."""
    k_dom, k_ctx, has_cls = ctx.budget
    attn, keys_or_hidden = ctx.saved_tensors
    metric = reference.merge_metric(keys_or_hidden, keys_or_hidden if ctx.keys_given else None)
    plan = reference.plan_zip(attn, metric, k_dom, k_ctx, has_cls)
    return hidden_gradient(grad_tokens, plan, *ctx.hidden_meta), None, None, None, None, None


def hidden_gradient(grad_tokens: torch.Tensor, plan: reference.ZipPlan, shape, dtype) -> torch.Tensor:
    """``d loss / d hidden`` ``[B, N, D]`` in ``dtype`` from ``grad_tokens`` ``[B, k_dom + k_ctx, D]``."""
    batch, _, width = shape
    k_dom = plan.dominant_idx.shape[1]
    grad = torch.zeros(shape, dtype=torch.float32, device=grad_tokens.device)
    grad_tokens = grad_tokens.float()

    def add_rows(idx: torch.Tensor, rows: torch.Tensor) -> None:
        grad.scatter_add_(1, idx.unsqueeze(-1).expand(-1, -1, width), rows)

    add_rows(plan.dominant_idx, grad_tokens[:, :k_dom])
    if plan.target_idx.shape[1] > 0:
        grad_contextual = grad_tokens[:, k_dom:]
        add_rows(plan.target_idx, grad_contextual)
        counts = torch.zeros(batch, plan.target_idx.shape[1], dtype=torch.float32, device=grad.device)
        counts.scatter_add_(1, plan.merge_assign, torch.ones_like(plan.merge_assign, dtype=torch.float32))
        per_member = grad_contextual / counts.clamp(min=1).unsqueeze(-1)
        add_rows(plan.merge_idx, reference.gather_tokens(per_member, plan.merge_assign))
    return grad.to(dtype)
