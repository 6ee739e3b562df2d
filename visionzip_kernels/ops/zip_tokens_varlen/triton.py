"""``zip_tokens_varlen`` on Triton: launch configuration and the kernel of
``visionzip::_zip_tokens_varlen_triton``.

Two launches (``triton_kernels.py``), tiled as ``zip_tokens``' Triton backend tiles a batch of
``n`` images of the largest segment's size (``zip_tokens.triton.launch_config``). The host passes
sizes it already knows (``T_total``, the largest segment, the largest ``k_ctx``) and one small
host-to-device copy of the per-segment budgets; no device data is read on the host.
``zip_tokens_varlen_triton`` runs on CUDA tensors and, under Triton's interpreter
(``TRITON_INTERPRET=1``), on CPU tensors alike.
"""
import torch
import triton

from ...varlen import offsets
from ..zip_tokens.triton import launch_config
from .triton_kernels import apply_kernel, plan_kernel


def zip_tokens_varlen_triton(hidden, importance, cu_seqlens, seqlens, k_dom, k_ctx, keys=None):
    """``(tokens [K_total, D], kept_idx [K_total], cu_kept [n + 1])`` on arguments validated by ``op.py``."""
    total, width = (int(size) for size in hidden.shape)
    device = hidden.device
    n_segments = len(seqlens)
    kept_counts = [n_dom + n_ctx for n_dom, n_ctx in zip(k_dom, k_ctx)]
    kept_offsets = offsets(kept_counts)
    n_kept = kept_offsets[-1]
    tokens = hidden.new_empty(n_kept, width)
    kept_idx = hidden.new_empty(n_kept, dtype=torch.int64)
    host_budgets = [[n_dom, n_ctx, first] for n_dom, n_ctx, first in zip(k_dom, k_ctx, kept_offsets)]
    budgets = torch.tensor(host_budgets, dtype=torch.int64).reshape(n_segments, 3).to(device, non_blocking=True)
    cu_kept = torch.tensor(kept_offsets, dtype=torch.int64).to(device, non_blocking=True)
    if n_kept == 0:
        return tokens, kept_idx, cu_kept

    max_tokens = max(seqlens)
    max_ctx = max(max(k_ctx), 1)
    config = launch_config(device, n_segments, max_tokens, width, max_ctx)
    cu = cu_seqlens.to(device=device, dtype=torch.int64)
    metric = hidden if keys is None else keys
    destination = hidden.new_empty(total, dtype=torch.int32)
    targets = hidden.new_empty(n_segments, config.plan_programs, max_ctx, dtype=torch.int32)
    target_rows = hidden.new_empty(n_segments, max_ctx, dtype=torch.int32)

    plan_kernel[(n_segments, config.plan_programs)](
        importance, int(importance.stride(0)), metric, *(int(s) for s in metric.stride()),
        cu, budgets, kept_idx, destination, targets, target_rows,
        total, max_tokens, max_ctx, int(metric.shape[1]),
        BLOCK_N=triton.next_power_of_2(max_tokens), BLOCK_M=config.block_m, BLOCK_T=config.plan_block_t,
        num_warps=config.plan_warps,
    )
    apply_kernel[(n_segments, triton.cdiv(width, config.block_c), triton.cdiv(max_ctx, config.apply_block_t))](
        hidden, *(int(s) for s in hidden.stride()),
        cu, budgets, destination, targets, target_rows, tokens,
        total, max_tokens, max_ctx, width, config.plan_programs,
        BLOCK_J=config.block_j, BLOCK_C=config.block_c, BLOCK_T=config.apply_block_t,
        num_warps=config.apply_warps,
    )
    return tokens, kept_idx, cu_kept
