"""The Triton kernels of ``zip_tokens`` (``docs/CONTRACT.md``): the plan in one to three launches,
the apply in one.

The work of one image is spread over many programs, so that a batch of one still fills the GPU:

1. ``column_sum_kernel``, grid ``(B, H, token blocks)``, only for a full ``[B, H, N, N]`` map without
   a CLS token: each head's attention received by each token, summed over queries in query order,
   into a ``[B, H, N]`` float32 workspace that ``select_kernel`` reads as per-head rows.
2. ``select_kernel``, grid ``(B,)``: token scores, the top-``k_dom`` selection, ``dominant_idx`` and
   every token's role (``destination``), and the target tokens (``targets``).
3. ``assign_kernel``, grid ``(B, token blocks)``, only for ``k_ctx > 0``: each merge token of the
   block assigned to a target (unit keys, similarities in channel order, argmax).
4. ``apply_kernel``, grid ``(B, channel blocks, target blocks)``: the output tokens; each program
   streams only the rows merged into its target block, so ``hidden`` is read once in all.

``zip_tokens_varlen``'s kernels are these stages with a packed segment in place of an image: they
call the same helpers (``_select_dominant``, ``_split_roles``, ``_assign_merge_tokens``,
``_copy_rows``, ``_contextual_rows``), which take pointers already at one image.

No program reads what another program of the same launch writes: each launch reads its inputs and
what earlier launches wrote, and writes elements that no other program of it touches. So no program
ever waits for another, and Triton's interpreter, which runs a launch's programs one after another,
checks the same dependencies the GPU sees. The split is free (any tile sizes give the same plan
bit for bit): every index-deciding quantity is computed per token, in the contract's order, by
whichever program owns the token.

The plan hands the apply two int32 workspaces:

- ``destination[b, j]``: where token ``j`` goes. ``-2 - i`` (``<= -2``): it is the dominant token of
  output slot ``i``; ``-1``: it is a target; ``t >= 0``: it is a merge token of target slot ``t``
  (``select_kernel`` writes ``0`` for every merge token, ``assign_kernel`` the slot).
- ``targets[b, t]``: the token index of target slot ``t``.

Every quantity that decides an index follows the contract's float32 order: sequential loops over
heads, queries and key channels, one rounding per product and per sum. No product may be fused into
a sum, so products, quotients and square roots are the correctly rounded helpers of
``ops/triton_math.py``.
"""
import triton
import triton.language as tl

from ..triton_math import div_rn, dot_f32, helper, mul_rn, round_to, sqrt_rn

# The loop over queries is unrolled this many times, so that the loads of that many query rows can be
# in flight together; the sums still run in order.
QUERY_UNROLL = tl.constexpr(32)


@triton.jit
def column_sum_kernel(
    attn_ptr, attn_batch_stride, attn_head_stride, attn_query_stride, attn_token_stride,
    rows_ptr, n_tokens,
    BLOCK_N: tl.constexpr,
):
    """Program ``(b, h, blk)``: ``rows[b, h, j] = ((attn[b,h,0,j] + attn[b,h,1,j]) + ...) +
    attn[b,h,N-1,j]`` for the ``BLOCK_N`` tokens ``j`` of block ``blk``.

    attn: ``[B, H, N, N]`` any float dtype, through its strides (int64 offsets); rows: ``[B, H, N]``
    float32, contiguous. Heads and token blocks are independent, so they run in parallel; each
    column is one sequential sum, as the contract orders it.
    """
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    tok = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    valid = tok < n_tokens
    column_ptr = attn_ptr + b * attn_batch_stride + h * attn_head_stride + tok.to(tl.int64) * attn_token_stride
    column = tl.load(column_ptr, mask=valid, other=0.0).to(tl.float32)
    for query in tl.range(1, n_tokens, loop_unroll_factor=QUERY_UNROLL):
        column += tl.load(column_ptr + tl.cast(query, tl.int64) * attn_query_stride, mask=valid, other=0.0).to(
            tl.float32
        )
    tl.store(rows_ptr + (b * tl.num_programs(1) + h) * n_tokens + tok, column, mask=valid)


@helper
def _token_scores(attn_ptr, head_stride, token_stride, tok, valid, ATTN_LAYOUT: tl.constexpr, ATTN_HEADS: tl.constexpr):
    """Scores ``[BLOCK_N]`` float32 of tokens ``tok`` (int64) of one image (``attn_ptr`` at it).

    ATTN_LAYOUT 0: ``[B, N]`` scores as given; 1: per-head rows (a ``[B, H, N]`` row, row 0 of a
    ``[B, H, N, N]`` map, or ``column_sum_kernel``'s sums), summed over heads in head order.
    """
    score = tl.load(attn_ptr + tok * token_stride, mask=valid, other=0.0).to(tl.float32)
    if ATTN_LAYOUT == 1:
        for h in tl.static_range(1, ATTN_HEADS):
            row = attn_ptr + tl.full([], h, tl.int64) * head_stride
            score += tl.load(row + tok * token_stride, mask=valid, other=0.0).to(tl.float32)
    return score


@helper
def _select_dominant(score, tok, valid, k_dom, HAS_CLS: tl.constexpr, RADIX_BITS: tl.constexpr):
    """Mask of the ``k_dom`` best-ranked valid tokens: highest score first, equal scores to the
    lower index, non-finite scores below every finite one, the CLS token (0) above all.

    Each score becomes an int32 key ordered like the float (with -0.0 and +0.0 one key). A radix
    search finds the ``k_dom``-th largest key ``RADIX_BITS`` bits per pass (``32 / RADIX_BITS``
    passes at most, each one block-wide count of the keys at or above each of ``2**RADIX_BITS``
    candidates), or stops early at a value with exactly ``k_dom`` keys at or above it; the tokens
    above that value are kept, and of those equal to it the lowest-indexed ones that complete
    ``k_dom``. Any ``RADIX_BITS`` dividing 32 gives the same mask.
    """
    ranked = tl.where(tl.abs(score) < float("inf"), score, float("-inf"))
    if HAS_CLS:
        ranked = tl.where(tok == 0, float("inf"), ranked)
    ranked = tl.where(ranked == 0.0, 0.0, ranked)
    bits = ranked.to(tl.int32, bitcast=True)
    key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(tl.int64)

    digit = tl.arange(0, 1 << RADIX_BITS).to(tl.int64)
    # Invariant: at least k_dom valid keys are >= kth, and fewer than k_dom are >= kth + 2**(shift + RADIX_BITS).
    kth = tl.full([], -2147483648, tl.int64)
    shift = tl.full([], 32 - RADIX_BITS, tl.int64)
    while shift >= 0:
        candidate = kth + (digit << shift)
        at_least = tl.sum((valid[None, :] & (key[None, :] >= candidate[:, None])).to(tl.int32), axis=1)
        # at_least falls as the digit rises, and digit 0 (kth itself) always qualifies.
        chosen = tl.sum((at_least >= k_dom).to(tl.int64), axis=0) - 1
        kth = kth + (chosen << shift)
        exact = tl.sum(tl.where(digit == chosen, at_least, 0), axis=0) == k_dom  # decided: stop early
        shift = tl.where(exact, -1, shift - RADIX_BITS)

    above = valid & (key > kth)
    tied = (valid & (key == kth)).to(tl.int32)
    quota = k_dom - tl.sum(above.to(tl.int32), axis=0)
    tied_before = tl.cumsum(tied, axis=0) - tied
    return above | ((tied > 0) & (tied_before < quota))


@helper
def _split_roles(keep, tok, valid, k_ctx, step):
    """``(dominant_slot, remaining_pos, is_target)`` of tokens ``tok`` given the dominant mask
    ``keep``: a dominant token's output slot (its rank among the kept), every token's position in
    the list of the remaining ones, and whether it is a target (positions ``0, step, 2 * step, ...``,
    the first ``k_ctx`` of them). Every other valid, not kept token is a merge token."""
    kept = keep.to(tl.int32)
    dominant_slot = tl.cumsum(kept, axis=0) - kept
    remaining_pos = tok - dominant_slot
    is_target = valid & ~keep & (remaining_pos % step == 0) & (remaining_pos < k_ctx * step)
    return dominant_slot, remaining_pos, is_target


@triton.jit
def select_kernel(
    attn_ptr, attn_batch_stride, attn_head_stride, attn_token_stride,
    dominant_ptr, destination_ptr, target_ptr,
    n_tokens, k_dom, k_ctx, step,
    ATTN_LAYOUT: tl.constexpr, ATTN_HEADS: tl.constexpr, HAS_CLS: tl.constexpr,
    BLOCK_N: tl.constexpr, RADIX_BITS: tl.constexpr,
):
    """Program ``b``: image ``b``'s dominant indices, ``destination`` and ``targets``.

    attn: one of ``_token_scores``' layouts, any float dtype, read through its strides (int64
    offsets). dominant: ``[B, k_dom]`` int64; destination: ``[B, N]`` int32; targets:
    ``[B, max(k_ctx, 1)]`` int32; all contiguous (see the module docstring).
    ``step = max(1, (N - k_dom) // k_ctx)``. ``BLOCK_N >= N`` (a power of two): the whole image's
    scores are one block.
    """
    b = tl.program_id(0).to(tl.int64)
    tok = tl.arange(0, BLOCK_N)
    valid = tok < n_tokens
    score = _token_scores(
        attn_ptr + b * attn_batch_stride, attn_head_stride, attn_token_stride, tok.to(tl.int64), valid,
        ATTN_LAYOUT, ATTN_HEADS,
    )
    keep = _select_dominant(score, tok, valid, k_dom, HAS_CLS, RADIX_BITS)

    dominant_slot, remaining_pos, is_target = _split_roles(keep, tok, valid, k_ctx, step)
    # The selection keeps exactly k_dom tokens; the bound keeps every store in the image's row regardless.
    tl.store(dominant_ptr + b * k_dom + dominant_slot, tok.to(tl.int64), mask=keep & (dominant_slot < k_dom))
    destination = tl.where(keep, -2 - dominant_slot, tl.where(is_target, -1, 0))
    tl.store(destination_ptr + b * n_tokens + tok, destination, mask=valid)
    tl.store(target_ptr + b * tl.maximum(k_ctx, 1) + remaining_pos // step, tok, mask=is_target)


@helper
def _metric(rows, channel, head_stride, channel_stride, mask, KEY_HEADS: tl.constexpr):
    """Float32 metric of one key channel for the rows at ``rows``: per-head keys summed over heads
    in head order then divided by ``KEY_HEADS``, or the keys (hidden states) as given."""
    col = rows + tl.cast(channel, tl.int64) * channel_stride
    value = tl.load(col, mask=mask, other=0.0).to(tl.float32)
    for h in tl.static_range(1, KEY_HEADS):
        value += tl.load(col + tl.full([], h, tl.int64) * head_stride, mask=mask, other=0.0).to(tl.float32)
    if KEY_HEADS > 1:
        value = div_rn(value, tl.full(value.shape, KEY_HEADS, tl.float32))
    return value


@helper
def _key_norms(rows, head_stride, channel_stride, mask, key_width, KEY_HEADS: tl.constexpr, UNROLL: tl.constexpr):
    """L2 norms of the metric rows: squares summed in channel order, correctly rounded sqrt."""
    squares = tl.zeros(mask.shape, tl.float32)
    for channel in tl.range(0, key_width, loop_unroll_factor=UNROLL):
        value = _metric(rows, channel, head_stride, channel_stride, mask, KEY_HEADS)
        squares += mul_rn(value, value)
    return sqrt_rn(squares)


@helper
def _unit(value, norm):
    """``value / norm`` correctly rounded; 0 where the norm is not > 0."""
    positive = norm > 0.0
    return tl.where(positive, div_rn(value, tl.where(positive, norm, 1.0)), 0.0)


@helper
def _assign_merge_tokens(
    image_keys, head_stride, token_stride, channel_stride, destination_ptr, target_ptr,
    tok, n_tokens, key_width, k_ctx,
    KEY_HEADS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr, UNROLL: tl.constexpr,
):
    """The target slot of each merge token among one image's tokens ``tok`` (``BLOCK_M`` of them),
    written into ``destination``.

    Pointers are at the image: its keys, its ``destination`` (``[N]``) and ``targets`` (``[k_ctx]``).
    Similarities are dot products of unit keys in channel order, over ``BLOCK_T`` targets at a time
    (every caller computes the targets' unit keys itself, in the same order, so all see the same
    bits); the best target is the largest similarity, equal ones to the lower target, NaN below
    every number. Only merge tokens' entries are rewritten; tokens without one cost nothing. The
    loops over channels are unrolled ``UNROLL`` times, so that the loads of that many channels can
    be in flight together.
    """
    destination = tl.load(destination_ptr + tok, mask=tok < n_tokens, other=-1)
    is_merge = destination >= 0
    if tl.max(is_merge.to(tl.int32), axis=0) > 0:
        rows = image_keys + tok.to(tl.int64) * token_stride
        norm = _key_norms(rows, head_stride, channel_stride, is_merge, key_width, KEY_HEADS, UNROLL)

        best = tl.full([BLOCK_M], float("-inf"), tl.float32)
        best_slot = tl.zeros([BLOCK_M], tl.int32)
        for first_slot in range(0, k_ctx, BLOCK_T):
            slot = first_slot + tl.arange(0, BLOCK_T)
            has_slot = slot < k_ctx
            target_tok = tl.load(target_ptr + slot, mask=has_slot, other=0)
            has_target = has_slot & (target_tok >= 0) & (target_tok < n_tokens)  # in the image, whatever was written
            target_rows = image_keys + target_tok.to(tl.int64) * token_stride
            target_norm = _key_norms(target_rows, head_stride, channel_stride, has_target, key_width, KEY_HEADS, UNROLL)
            sim = tl.zeros([BLOCK_M, BLOCK_T], tl.float32)
            for channel in tl.range(0, key_width, loop_unroll_factor=UNROLL):
                unit = _unit(_metric(rows, channel, head_stride, channel_stride, is_merge, KEY_HEADS), norm)
                target_unit = _unit(
                    _metric(target_rows, channel, head_stride, channel_stride, has_target, KEY_HEADS), target_norm
                )
                sim += mul_rn(unit[:, None], target_unit[None, :])
            sim = tl.where(has_slot[None, :] & (sim == sim), sim, float("-inf"))
            block_best = tl.max(sim, axis=1)
            block_slot = tl.min(tl.where(sim == block_best[:, None], slot[None, :], 2147483647), axis=1)
            better = block_best > best
            best = tl.where(better, block_best, best)
            best_slot = tl.where(better, block_slot, best_slot)
        tl.store(destination_ptr + tok, best_slot, mask=is_merge)


@triton.jit
def assign_kernel(
    key_ptr, key_batch_stride, key_head_stride, key_token_stride, key_channel_stride,
    destination_ptr, target_ptr,
    n_tokens, key_width, k_ctx,
    KEY_HEADS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr, UNROLL: tl.constexpr,
):
    """Program ``(b, blk)``: ``_assign_merge_tokens`` for image ``b``'s tokens
    ``[blk * BLOCK_M, (blk + 1) * BLOCK_M)``.

    keys: ``[B, H, N, Dk]`` (``KEY_HEADS = H``), or ``[B, N, Dk]`` keys or hidden states
    (``KEY_HEADS = 1``, head stride unused), any float dtype, through strides. destination and
    targets: ``select_kernel``'s workspaces.
    """
    b = tl.program_id(0).to(tl.int64)
    tok = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    _assign_merge_tokens(
        key_ptr + b * key_batch_stride, key_head_stride, key_token_stride, key_channel_stride,
        destination_ptr + b * n_tokens, target_ptr + b * k_ctx, tok, n_tokens, key_width, k_ctx,
        KEY_HEADS, BLOCK_M, BLOCK_T, UNROLL,
    )


@helper
def _copy_rows(hidden, token_stride, src_tok, out, out_token_stride, out_row, mask):
    """Rows ``src_tok`` of one image's channel block (``hidden``: ``[1, BLOCK_C]`` pointers at its
    channels) copied exactly to output rows ``out_row`` (``out``: the output's channel pointers)."""
    rows = tl.load(hidden + src_tok.to(tl.int64)[:, None] * token_stride, mask=mask)
    tl.store(out + out_row.to(tl.int64)[:, None] * out_token_stride, rows, mask=mask)


@helper
def _contextual_rows(
    hidden, token_stride, destination_ptr, target_ptr, n_tokens, first_slot, k_ctx, has_channel,
    out_dtype: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``[BLOCK_T, BLOCK_C]`` contextual rows of target slots ``first_slot + [0, BLOCK_T)`` (those
    ``< k_ctx``; the others are 0) for one image's channel block: ``hidden[target] + sum / members``
    in float32 (``hidden[target]`` where none was merged), rounded once to ``out_dtype``.

    ``hidden``: ``[1, BLOCK_C]`` pointers at the image's channels; ``destination_ptr`` and
    ``target_ptr``: the image's ``[N]`` roles and ``[k_ctx]`` target tokens. The target rows are
    loaded first, so that their latency hides behind the stream. The stream reads the image's
    tokens ``BLOCK_J`` at a time, and of their rows only those merged into these slots (dominant
    and target rows, and merge rows of other slots, are masked out), so that the programs of all
    target blocks together read each row of ``hidden`` once. The rows feed only a one-hot
    ``tl.dot`` (float32 accumulation, exact products for finite values), so Triton pipelines
    their loads behind the ``destination`` load of the same step.
    """
    slot = first_slot + tl.arange(0, BLOCK_T)
    has_slot = slot < k_ctx
    target_tok = tl.load(target_ptr + slot, mask=has_slot, other=0)
    has_target = has_slot & (target_tok >= 0) & (target_tok < n_tokens)  # in the image, whatever was written
    target = tl.load(
        hidden + target_tok.to(tl.int64)[:, None] * token_stride, mask=has_target[:, None] & has_channel[None, :],
        other=0.0,
    )
    sums = tl.zeros([BLOCK_T, BLOCK_C], tl.float32)
    members = tl.zeros([BLOCK_T], tl.float32)
    for first_tok in range(0, n_tokens, BLOCK_J):
        tok = first_tok + tl.arange(0, BLOCK_J)
        destination = tl.load(destination_ptr + tok, mask=tok < n_tokens, other=-1)
        in_block = (destination >= first_slot) & (destination < first_slot + BLOCK_T)
        rows = tl.load(
            hidden + tok.to(tl.int64)[:, None] * token_stride, mask=in_block[:, None] & has_channel[None, :], other=0.0
        )
        member = destination[None, :] == slot[:, None]
        # One-hot [T, J] x rows [J, C] into float32 sums: tensor cores for 16-bit rows.
        sums = dot_f32(member, rows, sums)
        members += tl.sum(member.to(tl.float32), axis=1)
    return round_to(target.to(tl.float32) + sums / tl.maximum(members, 1.0)[:, None], out_dtype)


@triton.jit
def apply_kernel(
    hidden_ptr, hidden_batch_stride, hidden_token_stride, hidden_channel_stride,
    dominant_ptr, destination_ptr, target_ptr, out_ptr, out_batch_stride, out_token_stride,
    n_tokens, width, k_dom, k_ctx,
    HAS_CONTEXT: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Program ``(b, c, t)``: channels ``[c * BLOCK_C, (c + 1) * BLOCK_C)`` of image ``b``'s output.

    Programs with ``t == 0`` copy the dominant rows exactly (a gather by ``dominant_idx``, ``BLOCK_J``
    rows at a time); each program writes the contextual rows of its ``BLOCK_T`` target slots
    (``_contextual_rows``). So ``hidden`` is read once in all. hidden: ``[B, N, D]`` any float
    dtype, through strides; out: ``[B, k_dom + k_ctx, D]`` hidden's dtype, unit channel stride;
    dominant: ``[B, k_dom]`` int64; destination and targets: the plan's workspaces.
    """
    b = tl.program_id(0).to(tl.int64)
    channel = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    has_channel = channel < width
    hidden = hidden_ptr + b * hidden_batch_stride + channel.to(tl.int64)[None, :] * hidden_channel_stride
    out = out_ptr + b * out_batch_stride + channel[None, :]

    if tl.program_id(2) == 0:
        for first_slot in range(0, k_dom, BLOCK_J):
            dominant_slot = first_slot + tl.arange(0, BLOCK_J)
            has_dominant = dominant_slot < k_dom
            dominant_tok = tl.load(dominant_ptr + b * k_dom + dominant_slot, mask=has_dominant, other=0)
            _copy_rows(
                hidden, hidden_token_stride, dominant_tok, out, out_token_stride, dominant_slot,
                has_dominant[:, None] & has_channel[None, :],
            )

    if HAS_CONTEXT:
        first_slot = tl.program_id(2) * BLOCK_T
        merged = _contextual_rows(
            hidden, hidden_token_stride, destination_ptr + b * n_tokens, target_ptr + b * k_ctx, n_tokens,
            first_slot, k_ctx, has_channel, out_ptr.dtype.element_ty, BLOCK_J, BLOCK_T, BLOCK_C,
        )
        slot = first_slot + tl.arange(0, BLOCK_T)
        out_row = (k_dom + slot).to(tl.int64)[:, None] * out_token_stride
        tl.store(out + out_row, merged, mask=(slot < k_ctx)[:, None] & has_channel[None, :])
