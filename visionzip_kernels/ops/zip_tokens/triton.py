"""``zip_tokens`` on Triton: launch configuration and the kernel of ``visionzip::_zip_tokens_triton``.

Two launches (``triton_kernels.py``): ``plan_kernel`` decides every index, ``apply_kernel`` moves the
rows. ``zip_tokens_triton`` is the op's kernel (registered in ``op.py``) for CUDA tensors and, under
Triton's interpreter (``TRITON_INTERPRET=1``), for CPU tensors alike. Nothing here reads device
data on the host, so a CUDA graph captures both launches; ``torch.compile`` sees the op through its
fake kernel.
"""
from dataclasses import dataclass
from functools import lru_cache

import torch
import triton

from .triton_kernels import apply_kernel, plan_kernel


@dataclass(frozen=True)
class LaunchConfig:
    """Program counts and tile sizes of the two launches (reasons in ``cuda_launch_config``).

    plan_programs: plan programs per image; block_m: tokens per assignment block; plan_block_t: targets
    per similarity tile; plan_warps: warps of a plan program; block_c: channels per apply program;
    block_j: rows per apply step; apply_block_t: target slots per apply program; apply_warps: warps
    of an apply program.
    """

    plan_programs: int
    block_m: int
    plan_block_t: int
    plan_warps: int
    block_c: int
    block_j: int
    apply_block_t: int
    apply_warps: int


@lru_cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def launch_config(device: torch.device, batch: int, n_tokens: int, width: int, k_ctx: int) -> LaunchConfig:
    """The launch configuration for ``batch`` images of ``n_tokens`` x ``width`` on ``device``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return cuda_launch_config(_sm_count(index), batch, n_tokens, width, k_ctx)
    return interpreter_launch_config(batch, n_tokens, k_ctx)


def cuda_launch_config(sms: int, batch: int, n_tokens: int, width: int, k_ctx: int) -> LaunchConfig:
    """Sized for Hopper (H100/H200) with ``sms`` multiprocessors."""
    block_m = 128
    return LaunchConfig(
        # Small batches spread each image's assignment over up to one program per SM; from B = SMs
        # on, one program per image already fills the GPU.
        plan_programs=min(triton.cdiv(n_tokens, block_m), triton.cdiv(sms, max(batch, 1))),
        # A [128, <= 32] float32 similarity tile is <= 32 registers per thread at 4 warps.
        block_m=block_m,
        # One target block covers the paper's budgets (k_ctx <= 30) with little padding.
        plan_block_t=min(32, triton.next_power_of_2(max(k_ctx, 1))),
        # <= 8 tokens per thread (16 above N = 2048) keeps each block-wide count of the selection short.
        plan_warps=4 if n_tokens <= 1024 else 8,
        # At least two apply programs per SM at small batch; 128 channels (256 B of bf16 per row
        # segment, whole cache lines) once the batch alone fills the GPU.
        block_c=next((c for c in (128, 64) if batch * triton.cdiv(width, c) >= 2 * sms), 32),
        # The K of the one-hot product: 64 rows (16 KiB of bf16 at 128 channels) per stage of the
        # software pipeline Triton builds for loads that feed tl.dot (default num_stages).
        block_j=64,
        # tl.dot needs >= 16 rows; <= 64 keeps the float32 accumulator <= 64 registers per thread.
        apply_block_t=min(64, max(16, triton.next_power_of_2(max(k_ctx, 1)))),
        # One warpgroup: a one-hot tile of 16-64 rows is a handful of MMAs; more warps would idle.
        apply_warps=4,
    )


def interpreter_launch_config(batch: int, n_tokens: int, k_ctx: int) -> LaunchConfig:
    """Small tiles for Triton's interpreter, so that tests at small sizes run every multi-block path
    (several plan programs, token blocks, target blocks and channel blocks); warps mean nothing there."""
    return LaunchConfig(
        plan_programs=min(triton.cdiv(n_tokens, 32), triton.cdiv(2, max(batch, 1))),
        block_m=32,
        plan_block_t=min(8, triton.next_power_of_2(max(k_ctx, 1))),
        plan_warps=1,
        block_c=32,
        block_j=32,
        apply_block_t=16,
        apply_warps=1,
    )


def _attn_layout(attn: torch.Tensor, has_cls: bool) -> tuple[int, int, tuple[int, ...]]:
    """``plan_kernel``'s ATTN_LAYOUT, head count and (batch, head, query, token) strides for ``attn``."""
    stride = [int(s) for s in attn.stride()]
    heads = int(attn.shape[1]) if attn.dim() > 2 else 1
    if attn.dim() == 2:
        return 0, heads, (stride[0], 0, 0, stride[1])
    if attn.dim() == 3:
        return 1, heads, (stride[0], stride[1], 0, stride[2])
    if has_cls:  # the CLS query's row: row 0 of each head
        return 1, heads, (stride[0], stride[1], 0, stride[3])
    return 2, heads, tuple(stride)


def _key_layout(hidden: torch.Tensor, keys: torch.Tensor | None) -> tuple[torch.Tensor, int, tuple[int, ...]]:
    """The similarity metric's tensor, KEY_HEADS and (batch, head, token, channel) strides."""
    metric = hidden if keys is None else keys
    stride = [int(s) for s in metric.stride()]
    if metric.dim() == 4:
        return metric, int(metric.shape[1]), tuple(stride)
    return metric, 1, (stride[0], 0, stride[1], stride[2])


def launch_zip_tokens(hidden, attn, k_dom, k_ctx, keys, has_cls, config: LaunchConfig):
    """Run both kernels on validated arguments; ``(tokens [B, k_dom + k_ctx, D], dominant_idx [B, k_dom])``.

    Inputs of any strides and float dtypes are read in place; the outputs and the int32
    workspaces (``destination`` ``[B, N]``, ``targets`` ``[B, plan_programs, max(k_ctx, 1)]``) are allocated here.
    """
    batch, n_tokens, width = (int(size) for size in hidden.shape)
    k_dom, k_ctx = int(k_dom), int(k_ctx)
    tokens = hidden.new_empty(batch, k_dom + k_ctx, width)
    dominant_idx = hidden.new_empty(batch, k_dom, dtype=torch.int64)
    if batch == 0:
        return tokens, dominant_idx
    destination = hidden.new_empty(batch, n_tokens, dtype=torch.int32)
    targets = hidden.new_empty(batch, config.plan_programs, max(k_ctx, 1), dtype=torch.int32)
    step = max(1, (n_tokens - k_dom) // k_ctx) if k_ctx > 0 else 1
    attn_layout, attn_heads, attn_strides = _attn_layout(attn, has_cls)
    metric, key_heads, key_strides = _key_layout(hidden, keys)

    plan_kernel[(batch, config.plan_programs)](
        attn, *attn_strides, metric, *key_strides, dominant_idx, destination, targets,
        n_tokens, int(metric.shape[-1]), k_dom, k_ctx, step,
        ATTN_LAYOUT=attn_layout, ATTN_HEADS=attn_heads, HAS_CLS=has_cls, KEY_HEADS=key_heads,
        BLOCK_N=triton.next_power_of_2(n_tokens), BLOCK_M=config.block_m, BLOCK_T=config.plan_block_t,
        num_warps=config.plan_warps,
    )
    target_blocks = max(1, triton.cdiv(k_ctx, config.apply_block_t))
    apply_kernel[(batch, triton.cdiv(width, config.block_c), target_blocks)](
        hidden, *(int(s) for s in hidden.stride()), destination, targets, tokens, width * (k_dom + k_ctx), width,
        n_tokens, width, k_dom, k_ctx, config.plan_programs,
        HAS_CONTEXT=k_ctx > 0, BLOCK_J=config.block_j, BLOCK_C=config.block_c, BLOCK_T=config.apply_block_t,
        num_warps=config.apply_warps,
    )
    return tokens, dominant_idx


def zip_tokens_triton(hidden, attn, k_dom: int, k_ctx: int, keys=None, has_cls: bool = True):
    """``visionzip::_zip_tokens_triton``: ``op.py``'s validation, then both launches (the op is
    public through ``torch.ops``, and no input may reach a kernel that cannot handle it)."""
    from .op import check_zip_tokens_args

    k_dom, k_ctx, has_cls = check_zip_tokens_args(hidden, attn, k_dom, k_ctx, keys, has_cls)
    config = launch_config(hidden.device, *(int(size) for size in hidden.shape), int(k_ctx))
    return launch_zip_tokens(hidden, attn, k_dom, k_ctx, keys, has_cls, config)
