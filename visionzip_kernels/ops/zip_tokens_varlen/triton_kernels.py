"""The Triton kernels of ``zip_tokens_varlen``: ``zip_tokens``' two launches, one segment per image.

``plan_kernel``, grid ``(n, S)``: program ``(i, s)`` plans segment ``i`` as ``zip_tokens``'
``plan_kernel`` plans an image (the same ``_select_dominant`` and ``_assign_block``, so the same
fixed float32 order and tie rules), with no CLS token and the segment's importance as its scores.
It also numbers the kept tokens (dominant and targets) in index order: that number is the token's
output row within the segment, written to ``kept_idx``. ``apply_kernel``, grid ``(n, channel
blocks, target blocks)``: streams the segment's rows once per target block, copies the dominant
rows and writes each target's row ``hidden[target] + sum / members`` at its output row.

Workspaces (int32): ``destination[t]`` for every packed token: ``-2 - r`` (``<= -2``) a dominant
token of output row ``r``, ``-1`` a target, ``m >= 0`` a merge token of target slot ``m``;
``targets[i, s, m]`` the segment-local index of target slot ``m`` (one copy per plan program, each
reading back its own); ``target_rows[i, m]`` the output row of target slot ``m``.

Per-segment numbers are read on the device: ``cu_seqlens`` int64 ``[n + 1]`` and ``budgets``
int64 ``[n, 3]`` (``k_dom``, ``k_ctx``, the segment's first output row). A segment's size is
clamped to ``[0, max_tokens]`` and to the packed length, and every output write to the segment's
``k_dom + k_ctx`` rows, so offsets that disagree with the host's sizes give unspecified values but
never an access out of bounds.
"""
import triton
import triton.language as tl

from ..triton_math import dot_f32, helper, round_to
from ..zip_tokens.triton_kernels import _assign_block, _select_dominant


@helper
def _segment(cu_ptr, budget_ptr, seg, total, max_tokens):
    """``(start, n_tokens, k_dom, k_ctx, out_start)`` of segment ``seg``, sizes clamped in bounds."""
    start = tl.minimum(tl.maximum(tl.load(cu_ptr + seg), 0), total)
    stop = tl.minimum(tl.maximum(tl.load(cu_ptr + seg + 1), start), total)
    n_tokens = tl.minimum(stop - start, max_tokens).to(tl.int32)
    k_dom = tl.load(budget_ptr + 3 * seg).to(tl.int32)
    k_ctx = tl.load(budget_ptr + 3 * seg + 1).to(tl.int32)
    out_start = tl.load(budget_ptr + 3 * seg + 2)
    return start, n_tokens, k_dom, k_ctx, out_start


@triton.jit
def plan_kernel(
    importance_ptr, importance_stride, key_ptr, key_token_stride, key_channel_stride,
    cu_ptr, budget_ptr, kept_ptr, destination_ptr, target_ptr, target_row_ptr,
    total, max_tokens, max_ctx, key_width,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Program ``(i, s)``: segment ``i``'s kept indices, destinations and target assignment for its
    token blocks ``s, s + S, ...``.

    importance: ``[T_total]`` any float dtype, through its stride; keys: ``[T_total, Dk]`` keys or
    hidden states, any float dtype, through strides; kept: ``[K_total]`` int64; destination
    ``[T_total]``, targets ``[n, S, max_ctx]`` and target_rows ``[n, max_ctx]`` int32, contiguous.
    ``BLOCK_N >= max_tokens`` (a power of two): a whole segment's importance is one block.
    """
    seg = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1)
    n_plan_programs = tl.num_programs(1)
    start, n_tokens, k_dom, k_ctx, out_start = _segment(cu_ptr, budget_ptr, seg, total, max_tokens)
    n_kept = k_dom + k_ctx

    tok = tl.arange(0, BLOCK_N)
    valid = tok < n_tokens
    score = tl.load(importance_ptr + (start + tok) * importance_stride, mask=valid, other=0.0).to(tl.float32)
    keep = _select_dominant(score, tok, valid, k_dom, False)

    kept = keep.to(tl.int32)
    remaining_pos = tok - (tl.cumsum(kept, axis=0) - kept)
    step = tl.maximum(1, (n_tokens - k_dom) // tl.maximum(k_ctx, 1))
    is_target = valid & ~keep & (remaining_pos % step == 0) & (remaining_pos < k_ctx * step)
    in_output = (keep | is_target).to(tl.int32)
    out_row = tl.cumsum(in_output, axis=0) - in_output
    in_output = (in_output > 0) & (out_row < n_kept)
    own = (tok // BLOCK_M) % n_plan_programs == s

    tl.store(kept_ptr + out_start + out_row, start + tok, mask=in_output & own)
    destination_ptr += start
    destination = tl.where(keep, -2 - out_row, tl.where(is_target, -1, 0))
    tl.store(destination_ptr + tok, destination, mask=valid & own)
    target_ptr += (seg * n_plan_programs + s) * max_ctx
    target_slot = remaining_pos // step
    tl.store(target_ptr + target_slot, tok, mask=is_target)
    if s == 0:
        tl.store(target_row_ptr + seg * max_ctx + target_slot, out_row, mask=is_target)

    if k_ctx > 0:
        tl.debug_barrier()  # this program's destination and target writes, read back below
        for block in range(s, tl.cdiv(n_tokens, BLOCK_M), n_plan_programs):
            _assign_block(
                key_ptr + start * key_token_stride, 0, key_token_stride, key_channel_stride,
                destination_ptr, target_ptr, block, n_tokens, key_width, k_ctx, 1, BLOCK_M, BLOCK_T,
            )


@triton.jit
def apply_kernel(
    hidden_ptr, hidden_token_stride, hidden_channel_stride,
    cu_ptr, budget_ptr, destination_ptr, target_ptr, target_row_ptr, out_ptr,
    total, max_tokens, max_ctx, width, n_plan_programs,
    BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Program ``(i, c, t)``: channels ``[c * BLOCK_C, (c + 1) * BLOCK_C)`` of segment ``i``'s output.

    As ``zip_tokens``' ``apply_kernel``: programs with ``t == 0`` copy the dominant rows exactly;
    each program sums the merge rows of its ``BLOCK_T`` target slots with a one-hot ``tl.dot``
    (float32), then writes ``hidden[target] + sum / members`` rounded once to the output dtype, at
    the target's output row. hidden: ``[T_total, D]`` through strides; out: ``[K_total, D]``
    contiguous; the other pointers are the plan's.
    """
    seg = tl.program_id(0).to(tl.int64)
    start, n_tokens, k_dom, k_ctx, out_start = _segment(cu_ptr, budget_ptr, seg, total, max_tokens)
    n_kept = k_dom + k_ctx
    channel = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    has_channel = channel < width
    slot = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)
    has_slot = slot < k_ctx
    copies_dominant = tl.program_id(2) == 0
    hidden = hidden_ptr + start * hidden_token_stride + channel.to(tl.int64)[None, :] * hidden_channel_stride
    out = out_ptr + out_start * width + channel[None, :]
    destination_ptr += start

    sums = tl.zeros([BLOCK_T, BLOCK_C], tl.float32)
    members = tl.zeros([BLOCK_T], tl.float32)
    for first_tok in range(0, n_tokens, BLOCK_J):
        tok = first_tok + tl.arange(0, BLOCK_J)
        has_tok = tok < n_tokens
        destination = tl.load(destination_ptr + tok, mask=has_tok, other=-1)
        rows = tl.load(
            hidden + tok.to(tl.int64)[:, None] * hidden_token_stride,
            mask=has_tok[:, None] & has_channel[None, :], other=0.0,
        )
        if copies_dominant:
            dominant_row = -2 - destination
            is_dominant = (destination <= -2) & (dominant_row < n_kept)
            tl.store(
                out + dominant_row.to(tl.int64)[:, None] * width, rows,
                mask=is_dominant[:, None] & has_channel[None, :],
            )
        member = destination[None, :] == slot[:, None]
        # One-hot [T, J] x rows [J, C] into float32 sums: tensor cores for 16-bit rows.
        sums = dot_f32(member, rows, sums)
        members += tl.sum(member.to(tl.float32), axis=1)

    target_tok = tl.load(target_ptr + seg * n_plan_programs * max_ctx + slot, mask=has_slot, other=0)
    target_row = tl.load(target_row_ptr + seg * max_ctx + slot, mask=has_slot, other=0)
    mask = (has_slot & (target_row < n_kept))[:, None] & has_channel[None, :]
    target = tl.load(hidden + target_tok.to(tl.int64)[:, None] * hidden_token_stride, mask=mask, other=0.0)
    merged = target.to(tl.float32) + sums / tl.maximum(members, 1.0)[:, None]
    tl.store(out + target_row.to(tl.int64)[:, None] * width, round_to(merged, out_ptr.dtype.element_ty), mask=mask)
