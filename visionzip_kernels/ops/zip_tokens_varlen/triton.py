"""``zip_tokens_varlen`` on Triton: launch configuration and the kernel of
``visionzip::_zip_tokens_varlen_triton``.

Three launches (``triton_kernels.py``: select, assign, apply), tiled as ``zip_tokens``' Triton
backend tiles a batch of ``n`` images of the largest segment's size (``zip_tokens.triton.launch_config``),
so that one segment's work is spread over many programs as one image's is. The host passes sizes it
already knows (``T_total``, the largest segment, the largest ``k_ctx``) and one small host-to-device
copy of the per-segment budgets; no device data is read on the host. ``zip_tokens_varlen_triton``
runs on CUDA tensors and, under Triton's interpreter (``TRITON_INTERPRET=1``), on CPU tensors alike.
"""
import torch
import triton

from ...varlen import offsets
from ..zip_tokens.triton import LaunchConfig, assign_unroll, launch_config
from .triton_kernels import apply_kernel, assign_kernel, select_kernel


def zip_tokens_varlen_triton(hidden, importance, cu_seqlens, seqlens, k_dom, k_ctx, keys=None):
    """``(tokens [K_total, D], kept_idx [K_total], cu_kept [n + 1])`` on arguments validated by
    ``op.py``, tiled by ``launch_config`` for ``n`` images of the largest segment's size."""
    max_tokens = max(max(seqlens, default=0), 1)
    max_ctx = max(max(k_ctx, default=0), 1)
    config = launch_config(hidden.device, len(seqlens), max_tokens, int(hidden.shape[1]), max_ctx)
    return launch_zip_tokens_varlen(hidden, importance, cu_seqlens, seqlens, k_dom, k_ctx, keys, config)


def launch_zip_tokens_varlen(hidden, importance, cu_seqlens, seqlens, k_dom, k_ctx, keys, config: LaunchConfig):
    """``zip_tokens_varlen_triton`` with the tiles of ``config`` (any tiles give the same indices)."""
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
    cu = cu_seqlens.to(device=device, dtype=torch.int64)
    metric = hidden if keys is None else keys
    destination = hidden.new_empty(total, dtype=torch.int32)
    targets = hidden.new_empty(n_segments, max_ctx, dtype=torch.int32)
    target_rows = hidden.new_empty(n_segments, max_ctx, dtype=torch.int32)
    sizes = (total, max_tokens, max_ctx)

    select_kernel[(n_segments,)](
        importance, int(importance.stride(0)), cu, budgets, kept_idx, destination, targets, target_rows, *sizes,
        BLOCK_N=triton.next_power_of_2(max_tokens), RADIX_BITS=config.radix_bits, num_warps=config.select_warps,
    )
    if max(k_ctx) > 0:
        assign_kernel[(n_segments, triton.cdiv(max_tokens, config.block_m))](
            metric, *(int(s) for s in metric.stride()), cu, budgets, destination, targets, *sizes,
            int(metric.shape[1]),
            BLOCK_M=config.block_m, BLOCK_T=config.assign_block_t, UNROLL=assign_unroll(1),
            num_warps=config.assign_warps,
        )
    apply_kernel[(n_segments, triton.cdiv(width, config.block_c), triton.cdiv(max_ctx, config.apply_block_t))](
        hidden, *(int(s) for s in hidden.stride()),
        cu, budgets, kept_idx, destination, targets, target_rows, tokens, *sizes, width,
        BLOCK_J=config.block_j, BLOCK_C=config.block_c, BLOCK_T=config.apply_block_t,
        num_warps=config.apply_warps, num_stages=config.apply_stages,
    )
    return tokens, kept_idx, cu_kept
