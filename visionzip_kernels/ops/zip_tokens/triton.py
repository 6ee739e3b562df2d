"""``zip_tokens`` on Triton: launch configuration and the kernel of ``visionzip::_zip_tokens_triton``.

The plan (``launch_plan``: ``column_sum_kernel`` for a full map without CLS, ``select_kernel``,
``assign_kernel``) decides every index; the apply (``launch_apply``: ``apply_kernel``) moves the
rows (``triton_kernels.py`` describes the work split). ``zip_tokens_triton`` is the op's kernel
(registered in ``op.py``) for CUDA tensors and, under Triton's interpreter (``TRITON_INTERPRET=1``),
for CPU tensors alike. Nothing here reads device data on the host, so a CUDA graph captures every
launch; ``torch.compile`` sees the op through its fake kernel.
"""
from dataclasses import dataclass
from functools import lru_cache

import torch
import triton

from .triton_kernels import apply_kernel, assign_kernel, column_sum_kernel, select_kernel


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes and warps of the launches (reasons in ``cuda_launch_config``). Any values give the
    same plan bit for bit; they move only time (and the merge sums' float32 rounding, by ``block_j``).

    column_block: tokens per column-sum program; radix_bits: bits the selection decides per pass
    (divides 32); select_warps: warps of the selection program; block_m: tokens per assignment
    program; assign_block_t: targets per similarity tile; assign_warps: warps of an assignment
    program; block_c: channels per apply program; block_j: rows per apply step (>= 16);
    apply_block_t: target slots per apply program (>= 16); apply_warps: warps of an apply program;
    apply_stages: software-pipeline depth of the apply's row stream.
    """

    column_block: int
    radix_bits: int
    select_warps: int
    block_m: int
    assign_block_t: int
    assign_warps: int
    block_c: int
    block_j: int
    apply_block_t: int
    apply_warps: int
    apply_stages: int


@dataclass(frozen=True)
class TritonPlan:
    """The plan's outputs: ``dominant_idx`` ``[B, k_dom]`` int64 (the op's second output), and the
    int32 workspaces ``destination`` ``[B, N]`` and ``targets`` ``[B, max(k_ctx, 1)]``
    (``triton_kernels.py`` gives their encoding)."""

    dominant_idx: torch.Tensor
    destination: torch.Tensor
    targets: torch.Tensor


@lru_cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def launch_config(device: torch.device, batch: int, n_tokens: int, width: int, k_ctx: int) -> LaunchConfig:
    """The launch configuration for ``batch`` images of ``n_tokens`` x ``width`` on ``device``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return cuda_launch_config(_sm_count(index), batch, n_tokens, width, k_ctx)
    return interpreter_launch_config(n_tokens, width, k_ctx)


def cuda_launch_config(sms: int, batch: int, n_tokens: int, width: int, k_ctx: int) -> LaunchConfig:
    """Sized for Hopper (H100/H200) with ``sms`` multiprocessors."""
    block_n = triton.next_power_of_2(n_tokens)
    # Small batches: 32-token assignment programs (19 per CLIP image); once 64-token programs
    # give every SM two, the larger ones recompute the targets' unit keys half as often.
    wide_assign = batch * triton.cdiv(n_tokens, 64) >= 2 * sms
    target_blocks = max(1, triton.cdiv(k_ctx, 64))
    # At least two apply programs per SM where the batch allows; 128 channels (256 B of bf16 per row,
    # whole cache lines) once the batch alone fills the GPU; never under 16 (tl.dot's N).
    block_c = next((c for c in (128, 64, 32) if batch * triton.cdiv(width, c) * target_blocks >= 2 * sms), 16)
    return LaunchConfig(
        # 128 columns (256 B of a bf16 query row) per program: H x N / 128 programs per image.
        column_block=128,
        # 16 candidates per pass, 8 passes at most, while the [16, BLOCK_N] count tile stays
        # <= 64 elements per thread at 8 warps; 4 candidates (16 passes) up to N = 4096; then bits.
        radix_bits=4 if block_n <= 1024 else (2 if block_n <= 4096 else 1),
        select_warps=8,
        block_m=64 if wide_assign else 32,
        # One target tile covers the paper's budgets (k_ctx <= 30) with little padding.
        assign_block_t=min(32, triton.next_power_of_2(max(k_ctx, 1))),
        assign_warps=4 if wide_assign else 2,
        block_c=block_c,
        # The K of the one-hot product: 4-16 KiB of bf16 rows per pipeline stage (64 rows of 64 or
        # 128 channels, 128 rows of 16 or 32), so that a CLIP image is 5-10 steps.
        block_j=128 if block_c <= 32 else 64,
        # tl.dot needs >= 16 rows; <= 64 keeps the float32 accumulator <= 64 registers per thread.
        apply_block_t=min(64, max(16, triton.next_power_of_2(max(k_ctx, 1)))),
        # One warpgroup: a one-hot tile of 16-64 rows is a handful of MMAs; more warps would idle.
        apply_warps=4,
        # The row load's mask comes from the plan's load in the same step: with 5 stages Triton keeps
        # two row tiles in flight (three or four give one, seen in the sm_90 TTGIR); at 128 channels
        # that is 128 registers and 35 KiB of shared memory, four programs and 128 KiB of loads in
        # flight per SM, over the ~64 KiB that covers the memory latency at full bandwidth.
        apply_stages=5,
    )


def interpreter_launch_config(n_tokens: int, width: int, k_ctx: int) -> LaunchConfig:
    """Small tiles for Triton's interpreter, so that tests at small sizes run every multi-block path
    (several column, assignment, target and channel blocks, several selection passes), and about
    four token and eight channel blocks at model sizes, where the interpreter's cost grows with the
    number of programs; warps and stages mean nothing there."""
    return LaunchConfig(
        column_block=32,
        radix_bits=2,
        select_warps=1,
        block_m=min(128, max(32, triton.next_power_of_2(triton.cdiv(n_tokens, 4)))),
        assign_block_t=min(8, triton.next_power_of_2(max(k_ctx, 1))),
        assign_warps=1,
        block_c=min(128, max(32, triton.next_power_of_2(triton.cdiv(width, 8)))),
        block_j=32 if n_tokens <= 256 else 64,
        apply_block_t=16,
        apply_warps=1,
        apply_stages=1,
    )


def attn_rows(attn: torch.Tensor, has_cls: bool, column_block: int) -> tuple[torch.Tensor, int, int, tuple]:
    """``select_kernel``'s view of ``attn``: (tensor, ATTN_LAYOUT, head count, (batch, head, token)
    strides). A full map without CLS is first reduced to per-head rows by ``column_sum_kernel``."""
    stride = [int(s) for s in attn.stride()]
    if attn.dim() == 2:
        return attn, 0, 1, (stride[0], 0, stride[1])
    heads = int(attn.shape[1])
    if attn.dim() == 3:
        return attn, 1, heads, (stride[0], stride[1], stride[2])
    if has_cls:  # the CLS query's row: row 0 of each head
        return attn, 1, heads, (stride[0], stride[1], stride[3])
    batch, n_tokens = int(attn.shape[0]), int(attn.shape[-1])
    rows = torch.empty(batch, heads, n_tokens, dtype=torch.float32, device=attn.device)
    column_sum_kernel[(batch, heads, triton.cdiv(n_tokens, column_block))](
        attn, *stride, rows, n_tokens, BLOCK_N=column_block,
    )
    return rows, 1, heads, (heads * n_tokens, n_tokens, 1)


def _key_layout(hidden: torch.Tensor, keys: torch.Tensor | None) -> tuple[torch.Tensor, int, tuple[int, ...]]:
    """The similarity metric's tensor, KEY_HEADS and (batch, head, token, channel) strides."""
    metric = hidden if keys is None else keys
    stride = [int(s) for s in metric.stride()]
    if metric.dim() == 4:
        return metric, int(metric.shape[1]), tuple(stride)
    return metric, 1, (stride[0], 0, stride[1], stride[2])


def assign_unroll(key_heads: int) -> int:
    """``assign_kernel``'s channel-loop unrolling for keys of ``key_heads`` heads: about 64 loads per
    row in flight, a whole 64-channel key row in one round trip."""
    return max(4, 64 // key_heads)


def launch_plan(hidden, attn, k_dom, k_ctx, keys, has_cls, config: LaunchConfig) -> TritonPlan:
    """Decide every index for validated arguments (``batch >= 1``): the plan's launches."""
    batch, n_tokens, _ = (int(size) for size in hidden.shape)
    k_dom, k_ctx = int(k_dom), int(k_ctx)
    dominant_idx = hidden.new_empty(batch, k_dom, dtype=torch.int64)
    destination = hidden.new_empty(batch, n_tokens, dtype=torch.int32)
    targets = hidden.new_empty(batch, max(k_ctx, 1), dtype=torch.int32)
    step = max(1, (n_tokens - k_dom) // k_ctx) if k_ctx > 0 else 1
    rows, attn_layout, attn_heads, attn_strides = attn_rows(attn, has_cls, config.column_block)
    select_kernel[(batch,)](
        rows, *attn_strides, dominant_idx, destination, targets, n_tokens, k_dom, k_ctx, step,
        ATTN_LAYOUT=attn_layout, ATTN_HEADS=attn_heads, HAS_CLS=has_cls,
        BLOCK_N=triton.next_power_of_2(n_tokens), RADIX_BITS=config.radix_bits, num_warps=config.select_warps,
    )
    if k_ctx > 0:
        metric, key_heads, key_strides = _key_layout(hidden, keys)
        assign_kernel[(batch, triton.cdiv(n_tokens, config.block_m))](
            metric, *key_strides, destination, targets, n_tokens, int(metric.shape[-1]), k_ctx,
            KEY_HEADS=key_heads, BLOCK_M=config.block_m, BLOCK_T=config.assign_block_t,
            UNROLL=assign_unroll(key_heads), num_warps=config.assign_warps,
        )
    return TritonPlan(dominant_idx, destination, targets)


def launch_apply(hidden, plan: TritonPlan, k_dom, k_ctx, config: LaunchConfig) -> torch.Tensor:
    """The output tokens ``[B, k_dom + k_ctx, D]`` of ``plan`` (``batch >= 1``): the apply launch."""
    batch, n_tokens, width = (int(size) for size in hidden.shape)
    k_dom, k_ctx = int(k_dom), int(k_ctx)
    tokens = hidden.new_empty(batch, k_dom + k_ctx, width)
    target_blocks = max(1, triton.cdiv(k_ctx, config.apply_block_t))
    apply_kernel[(batch, triton.cdiv(width, config.block_c), target_blocks)](
        hidden, *(int(s) for s in hidden.stride()), plan.dominant_idx, plan.destination, plan.targets,
        tokens, width * (k_dom + k_ctx), width, n_tokens, width, k_dom, k_ctx,
        HAS_CONTEXT=k_ctx > 0, BLOCK_J=config.block_j, BLOCK_C=config.block_c, BLOCK_T=config.apply_block_t,
        num_warps=config.apply_warps, num_stages=config.apply_stages,
    )
    return tokens


def launch_zip_tokens(hidden, attn, k_dom, k_ctx, keys, has_cls, config: LaunchConfig):
    """Run every launch on validated arguments; ``(tokens [B, k_dom + k_ctx, D], dominant_idx [B, k_dom])``.

    Inputs of any strides and float dtypes are read in place; the outputs and the workspaces are
    allocated here.
    """
    if int(hidden.shape[0]) == 0:
        width = int(hidden.shape[2])
        return hidden.new_empty(0, k_dom + k_ctx, width), hidden.new_empty(0, k_dom, dtype=torch.int64)
    plan = launch_plan(hidden, attn, k_dom, k_ctx, keys, has_cls, config)
    return launch_apply(hidden, plan, k_dom, k_ctx, config), plan.dominant_idx


def zip_tokens_triton(hidden, attn, k_dom: int, k_ctx: int, keys=None, has_cls: bool = True):
    """``visionzip::_zip_tokens_triton``: ``op.py``'s validation, then every launch (the op is
    public through ``torch.ops``, and no input may reach a kernel that cannot handle it)."""
    from .op import check_zip_tokens_args

    k_dom, k_ctx, has_cls = check_zip_tokens_args(hidden, attn, k_dom, k_ctx, keys, has_cls)
    config = launch_config(hidden.device, *(int(size) for size in hidden.shape), int(k_ctx))
    return launch_zip_tokens(hidden, attn, k_dom, k_ctx, keys, has_cls, config)
