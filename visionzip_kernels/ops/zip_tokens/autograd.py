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

The autograd formula itself is C++ (``csrc/zip_tokens_autograd.cpp``, registered for the public op
and every backend op), so a call that needs no gradient runs no Python; its backward pass calls
``visionzip::_zip_tokens_hidden_grad``, whose kernel is ``hidden_grad`` below.
"""
from __future__ import annotations

import torch

from . import reference


def hidden_grad(grad_tokens, attn, metric_source, keys_given, k_dom, k_ctx, has_cls, hidden_size, hidden_dtype):
    """The kernel of ``visionzip::_zip_tokens_hidden_grad``, which the C++ autograd of every
    ``zip_tokens`` op calls (``csrc/zip_tokens_autograd.cpp``): ``d loss / d hidden`` from
    ``grad_tokens``, the plan recomputed from ``attn`` and ``metric_source`` (``keys``, or
    ``hidden`` when ``keys_given`` is false)."""
    metric = reference.merge_metric(metric_source, metric_source if keys_given else None)
    plan = reference.plan_zip(attn, metric, k_dom, k_ctx, has_cls)
    return hidden_gradient(grad_tokens, plan, tuple(hidden_size), hidden_dtype)


def hidden_grad_fake(grad_tokens, attn, metric_source, keys_given, k_dom, k_ctx, has_cls, hidden_size, hidden_dtype):
    """The gradient's shape and dtype, for ``torch.compile``."""
    return grad_tokens.new_empty(tuple(hidden_size), dtype=hidden_dtype)


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


torch.library.register_kernel("visionzip::_zip_tokens_hidden_grad", ("cpu", "cuda"))(hidden_grad)
torch.library.register_fake("visionzip::_zip_tokens_hidden_grad")(hidden_grad_fake)
