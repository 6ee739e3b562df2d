"""The PyTorch reference of ``zip_tokens``: ``docs/CONTRACT.md`` in code.

Readable first, fast second. The indices are computed once (:func:`plan_zip`, the ``ZipPlan``) and
then applied to the hidden states (:func:`apply_zip`), so the same plan can be applied in float64
by the tests. The quantities that decide an index (scores, key norms, similarities) are evaluated
in the contract's fixed float32 order, one rounding per product and per sum, which every backend
reproduces bit for bit; this is why those sums are written as loops rather than ``.sum()``.
Inputs are trusted: validation happens once, in ``op.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ZipPlan:
    """Which token goes where, for a batch of ``B`` images of ``N`` tokens.

    dominant_idx: ``[B, k_dom]`` int64, ascending indices into ``N`` of the dominant tokens.
    target_idx:   ``[B, k_ctx]`` int64, ascending indices into ``N`` of the contextual targets.
    merge_idx:    ``[B, M - k_ctx]`` int64, ascending indices into ``N`` of the merge tokens.
    merge_assign: ``[B, M - k_ctx]`` int64 in ``[0, k_ctx)``, the target slot of each merge token.
    """

    dominant_idx: torch.Tensor
    target_idx: torch.Tensor
    merge_idx: torch.Tensor
    merge_assign: torch.Tensor


def ordered_sum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Float32 sum of ``x`` over ``dim`` in index order: ``((x0 + x1) + x2) + ...``."""
    terms = x.movedim(dim, 0)
    total = terms[0].float()
    for term in terms[1:]:
        total = total + term.float()
    return total


def token_scores(attn: torch.Tensor, has_cls: bool) -> torch.Tensor:
    """Head-reduced importance of every token, ``[B, N]`` float32.

    attn: ``[B, H, N, N]`` attention probabilities, ``[B, H, N]`` per-head rows, or ``[B, N]``
    scores (returned as given). With ``has_cls`` the row of a full map is the CLS query's,
    otherwise every query's attention to a key is summed, in query order; rows are then summed
    over heads, in head order.
    """
    if attn.dim() == 2:
        return attn.float()
    if attn.dim() == 4:
        rows = attn[:, :, 0, :] if has_cls else ordered_sum(attn, dim=2)
    else:
        rows = attn
    return ordered_sum(rows, dim=1)


def select_dominant(scores: torch.Tensor, k_dom: int, has_cls: bool) -> torch.Tensor:
    """Ascending indices ``[B, k_dom]`` of the ``k_dom`` best-scoring tokens.

    Highest score first, equal scores to the lower index, non-finite scores last; the CLS token
    (index 0, where ``has_cls``) is always kept and counts towards ``k_dom``.
    """
    ranked = torch.where(torch.isfinite(scores), scores, float("-inf"))
    if has_cls:
        ranked[:, 0] = float("inf")
    order = torch.sort(ranked, dim=1, descending=True, stable=True).indices
    return order[:, :k_dom].sort(dim=1).values


def merge_metric(hidden: torch.Tensor, keys: torch.Tensor | None) -> torch.Tensor:
    """The similarity metric, ``[B, N, Dk]`` float32: head-averaged keys, or ``hidden`` itself."""
    if keys is None:
        return hidden.float()
    if keys.dim() == 4:
        return ordered_sum(keys, dim=1) / keys.shape[1]
    return keys.float()


def normalise(metric: torch.Tensor) -> torch.Tensor:
    """L2-normalised rows of ``metric`` ``[..., Dk]`` float32; a row whose norm is not > 0 is 0.

    The square root is taken in float64 and rounded to float32, which is the correctly rounded
    float32 root (PyTorch's float32 ``sqrt`` on the CPU is not correctly rounded).
    """
    norm = ordered_sum(metric * metric, dim=-1).double().sqrt().float().unsqueeze(-1)
    positive = norm > 0
    return torch.where(positive, metric / torch.where(positive, norm, 1.0), 0.0)


def similarity(merge_unit: torch.Tensor, target_unit: torch.Tensor) -> torch.Tensor:
    """Dot products ``[B, Mm, T]`` of unit keys ``[B, Mm, Dk]`` and ``[B, T, Dk]``, in ``Dk`` order."""
    total = merge_unit[:, :, None, 0] * target_unit[:, None, :, 0]
    for d in range(1, merge_unit.shape[-1]):
        total = total + merge_unit[:, :, None, d] * target_unit[:, None, :, d]
    return total


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``x[b, idx[b, i]]``: ``x`` ``[B, N, C]``, ``idx`` ``[B, K]`` -> ``[B, K, C]``."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def plan_zip(
    attn: torch.Tensor, metric: torch.Tensor, k_dom: int, k_ctx: int, has_cls: bool
) -> ZipPlan:
    """Compute the dominant set, the target/merge split and each merge token's target.

    attn: any of ``token_scores``' layouts; metric: ``[B, N, Dk]`` float32 (``merge_metric``).
    """
    scores = token_scores(attn, has_cls)
    batch, n_tokens = scores.shape
    device = scores.device
    dominant_idx = select_dominant(scores, k_dom, has_cls)

    is_dominant = torch.zeros(batch, n_tokens, dtype=torch.uint8, device=device)
    is_dominant.scatter_(1, dominant_idx, 1)
    n_remaining = n_tokens - k_dom
    remaining_idx = torch.sort(is_dominant, dim=1, stable=True).indices[:, :n_remaining]

    if k_ctx == 0:
        empty = remaining_idx[:, :0]
        return ZipPlan(dominant_idx, empty, remaining_idx, torch.zeros_like(remaining_idx))

    step = max(1, n_remaining // k_ctx)
    target_pos = torch.arange(0, n_remaining, step, device=device)[:k_ctx]
    is_target = torch.zeros(n_remaining, dtype=torch.uint8, device=device)
    is_target[target_pos] = 1
    # The merge positions, ascending, by a stable sort rather than a boolean mask: their count is
    # known here, so no device data is read on the host (nor needed on the meta device).
    n_merge = n_remaining - target_pos.shape[0]
    merge_pos = torch.sort(is_target, stable=True).indices[:n_merge]
    target_idx = remaining_idx[:, target_pos]
    merge_idx = remaining_idx[:, merge_pos]

    sim = similarity(
        normalise(gather_tokens(metric, merge_idx)), normalise(gather_tokens(metric, target_idx))
    )
    merge_assign = torch.where(torch.isnan(sim), float("-inf"), sim).argmax(dim=-1)
    return ZipPlan(dominant_idx, target_idx, merge_idx, merge_assign)


def apply_zip(
    hidden: torch.Tensor, plan: ZipPlan, accum_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Tokens ``[B, k_dom + k_ctx, D]`` in ``hidden``'s dtype from a plan.

    Dominant rows are copied; each contextual row is ``hidden[target] + mean(hidden[merged])``,
    accumulated in ``accum_dtype`` and rounded once to ``hidden``'s dtype.
    """
    dominant = gather_tokens(hidden, plan.dominant_idx)
    k_ctx = plan.target_idx.shape[1]
    if k_ctx == 0:
        return dominant
    hidden_accum = hidden.to(accum_dtype)
    batch, _, width = hidden.shape
    assign = plan.merge_assign
    sums = torch.zeros(batch, k_ctx, width, dtype=accum_dtype, device=hidden.device)
    sums.scatter_add_(1, assign.unsqueeze(-1).expand(-1, -1, width), gather_tokens(hidden_accum, plan.merge_idx))
    counts = torch.zeros(batch, k_ctx, dtype=accum_dtype, device=hidden.device)
    counts.scatter_add_(1, assign, torch.ones_like(assign, dtype=accum_dtype))
    contextual = gather_tokens(hidden_accum, plan.target_idx) + sums / counts.clamp(min=1).unsqueeze(-1)
    return torch.cat([dominant, contextual.to(hidden.dtype)], dim=1)


def zip_tokens(
    hidden: torch.Tensor,
    attn: torch.Tensor,
    k_dom: int,
    k_ctx: int,
    keys: torch.Tensor | None = None,
    has_cls: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference ``zip_tokens``: ``(tokens [B, k_dom + k_ctx, D], dominant_idx [B, k_dom])``."""
    plan = plan_zip(attn, merge_metric(hidden, keys), k_dom, k_ctx, has_cls)
    return apply_zip(hidden, plan), plan.dominant_idx
