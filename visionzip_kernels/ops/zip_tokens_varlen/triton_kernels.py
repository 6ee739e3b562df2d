"""The Triton kernels of ``zip_tokens_varlen``: ``zip_tokens``' stages, one segment per image.

Each launch is the ``zip_tokens`` launch of the same name with a segment in place of an image, built
from the same helpers (so the same fixed float32 order, tie rules and work split):

1. ``select_kernel``, grid ``(n,)``: segment ``i``'s top-``k_dom`` selection (its importance as the
   scores, no CLS token), every token's role and the target tokens. It also numbers the kept tokens
   (dominant and targets) in index order: that number is the token's output row within the
   segment, written to ``kept_idx``.
2. ``assign_kernel``, grid ``(n, token blocks of the largest segment)``: each merge token of the
   block assigned to a target.
3. ``apply_kernel``, grid ``(n, channel blocks, target blocks)``: the output rows.

As there, no program reads what another program of the same launch writes.

Workspaces (int32): ``destination[t]`` for every packed token: ``-2 - r`` (``<= -2``) a dominant
token of output row ``r``, ``-1`` a target, ``m >= 0`` a merge token of target slot ``m``;
``targets[i, m]`` the segment-local index of target slot ``m``; ``target_rows[i, m]`` the output
row of target slot ``m``.

Per-segment numbers are read on the device: ``cu_seqlens`` int64 ``[n + 1]`` and ``budgets``
int64 ``[n, 3]`` (``k_dom``, ``k_ctx``, the segment's first output row). A segment's size is
clamped to ``[0, max_tokens]`` and to the packed length, ``k_ctx`` to ``[0, max_ctx]``, and every
output write to the segment's ``k_dom + k_ctx`` rows, so offsets that disagree with the host's
sizes give unspecified values but never an access out of bounds.
"""
import triton
import triton.language as tl

from ..triton_math import helper
from ..zip_tokens.triton_kernels import (
    _assign_merge_tokens,
    _contextual_rows,
    _copy_rows,
    _select_dominant,
    _split_roles,
)


@helper
def _segment(cu_ptr, budget_ptr, seg, total, max_tokens, max_ctx):
    """``(start, n_tokens, k_dom, k_ctx, out_start)`` of segment ``seg``, sizes clamped in bounds."""
    start = tl.minimum(tl.maximum(tl.load(cu_ptr + seg), 0), total)
    stop = tl.minimum(tl.maximum(tl.load(cu_ptr + seg + 1), start), total)
    n_tokens = tl.minimum(stop - start, max_tokens).to(tl.int32)
    k_dom = tl.load(budget_ptr + 3 * seg).to(tl.int32)
    k_ctx = tl.minimum(tl.maximum(tl.load(budget_ptr + 3 * seg + 1), 0), max_ctx).to(tl.int32)
    out_start = tl.load(budget_ptr + 3 * seg + 2)
    return start, n_tokens, k_dom, k_ctx, out_start


@triton.jit
def select_kernel(
    importance_ptr, importance_stride, cu_ptr, budget_ptr, kept_ptr, destination_ptr, target_ptr, target_row_ptr,
    total, max_tokens, max_ctx,
    BLOCK_N: tl.constexpr, RADIX_BITS: tl.constexpr,
):
    """Program ``i``: segment ``i``'s kept indices, ``destination``, ``targets`` and ``target_rows``.

    importance: ``[T_total]`` any float dtype, through its stride; kept: ``[K_total]`` int64;
    destination ``[T_total]``, targets and target_rows ``[n, max_ctx]`` int32, contiguous.
    ``BLOCK_N >= max_tokens`` (a power of two): a whole segment's importance is one block.
    """
    seg = tl.program_id(0).to(tl.int64)
    start, n_tokens, k_dom, k_ctx, out_start = _segment(cu_ptr, budget_ptr, seg, total, max_tokens, max_ctx)
    n_kept = k_dom + k_ctx

    tok = tl.arange(0, BLOCK_N)
    valid = tok < n_tokens
    score = tl.load(importance_ptr + (start + tok) * importance_stride, mask=valid, other=0.0).to(tl.float32)
    keep = _select_dominant(score, tok, valid, k_dom, False, RADIX_BITS)
    step = tl.maximum(1, (n_tokens - k_dom) // tl.maximum(k_ctx, 1))
    _, remaining_pos, is_target = _split_roles(keep, tok, valid, k_ctx, step)
    in_output = (keep | is_target).to(tl.int32)
    out_row = tl.cumsum(in_output, axis=0) - in_output
    in_output = (in_output > 0) & (out_row < n_kept)

    tl.store(kept_ptr + out_start + out_row, start + tok, mask=in_output)
    destination = tl.where(keep, -2 - out_row, tl.where(is_target, -1, 0))
    tl.store(destination_ptr + start + tok, destination, mask=valid)
    target_slot = seg * max_ctx + remaining_pos // step
    tl.store(target_ptr + target_slot, tok, mask=is_target)
    tl.store(target_row_ptr + target_slot, out_row, mask=is_target)


@triton.jit
def assign_kernel(
    key_ptr, key_token_stride, key_channel_stride, cu_ptr, budget_ptr, destination_ptr, target_ptr,
    total, max_tokens, max_ctx, key_width,
    BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr, UNROLL: tl.constexpr,
):
    """Program ``(i, blk)``: the target slot of each merge token among segment ``i``'s tokens
    ``[blk * BLOCK_M, (blk + 1) * BLOCK_M)`` (none past the segment's end).

    keys: ``[T_total, Dk]`` keys or hidden states, any float dtype, through strides; destination
    and targets: ``select_kernel``'s workspaces.
    """
    seg = tl.program_id(0).to(tl.int64)
    start, n_tokens, _, k_ctx, _ = _segment(cu_ptr, budget_ptr, seg, total, max_tokens, max_ctx)
    if k_ctx > 0:
        tok = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        _assign_merge_tokens(
            key_ptr + start * key_token_stride, 0, key_token_stride, key_channel_stride,
            destination_ptr + start, target_ptr + seg * max_ctx, tok, n_tokens, key_width, k_ctx,
            1, BLOCK_M, BLOCK_T, UNROLL,
        )


@triton.jit
def apply_kernel(
    hidden_ptr, hidden_token_stride, hidden_channel_stride,
    cu_ptr, budget_ptr, kept_ptr, destination_ptr, target_ptr, target_row_ptr, out_ptr,
    total, max_tokens, max_ctx, width,
    BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Program ``(i, c, t)``: channels ``[c * BLOCK_C, (c + 1) * BLOCK_C)`` of segment ``i``'s output.

    As ``zip_tokens``' ``apply_kernel``: programs with ``t == 0`` copy the dominant rows exactly
    (a gather over the segment's kept tokens, ``BLOCK_J`` output rows at a time, of those whose
    role is dominant); each program writes the contextual rows of its ``BLOCK_T`` target slots
    (``_contextual_rows``) at their output rows. hidden: ``[T_total, D]`` through strides; out:
    ``[K_total, D]`` contiguous; the other pointers are the plan's.
    """
    seg = tl.program_id(0).to(tl.int64)
    start, n_tokens, k_dom, k_ctx, out_start = _segment(cu_ptr, budget_ptr, seg, total, max_tokens, max_ctx)
    n_kept = k_dom + k_ctx
    channel = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    has_channel = channel < width
    hidden = hidden_ptr + start * hidden_token_stride + channel.to(tl.int64)[None, :] * hidden_channel_stride
    out = out_ptr + out_start * width + channel[None, :]
    destination_ptr += start

    if tl.program_id(2) == 0:
        for first_row in range(0, n_kept, BLOCK_J):
            row = first_row + tl.arange(0, BLOCK_J)
            kept_tok = tl.load(kept_ptr + out_start + row, mask=row < n_kept, other=start) - start
            has_tok = (row < n_kept) & (kept_tok >= 0) & (kept_tok < n_tokens)
            role = tl.load(destination_ptr + kept_tok, mask=has_tok, other=-1)
            is_dominant = has_tok & (role == -2 - row)
            mask = is_dominant[:, None] & has_channel[None, :]
            _copy_rows(hidden, hidden_token_stride, kept_tok, out, width, row, mask)

    first_slot = tl.program_id(2) * BLOCK_T
    if first_slot < k_ctx:
        merged = _contextual_rows(
            hidden, hidden_token_stride, destination_ptr, target_ptr + seg * max_ctx, n_tokens,
            first_slot, k_ctx, has_channel, out_ptr.dtype.element_ty, BLOCK_J, BLOCK_T, BLOCK_C,
        )
        slot = first_slot + tl.arange(0, BLOCK_T)
        has_slot = slot < k_ctx
        target_row = tl.load(target_row_ptr + seg * max_ctx + slot, mask=has_slot, other=0)
        mask = (has_slot & (target_row < n_kept))[:, None] & has_channel[None, :]
        tl.store(out + target_row.to(tl.int64)[:, None] * width, merged, mask=mask)
