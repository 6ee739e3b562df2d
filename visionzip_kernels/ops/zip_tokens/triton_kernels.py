"""The Triton kernels of ``zip_tokens`` (``docs/CONTRACT.md``): one launch plans, one applies.

``plan_kernel``, grid ``(B, S)``: decides every index. Each of the ``S`` programs of image ``b``
computes that image's token scores and top-``k_dom`` selection (repeated per program, so that no
program ever waits for another), writes the dominant indices and destinations of its own token blocks
(blocks ``s, s + S, s + 2S, ...`` of ``BLOCK_M`` tokens), then assigns each merge token of those
blocks to a target. ``apply_kernel``, grid ``(B, channel blocks, target blocks)``: moves the data,
streaming each image's rows of ``hidden`` once per target block (one block for ``k_ctx <= 64``): it
copies the dominant rows from that stream and writes the contextual tokens.

The plan hands the apply two int32 workspaces:

- ``destination[b, j]``: where token ``j`` goes. ``-2 - i`` (``<= -2``): it is the dominant token of
  output slot ``i``; ``-1``: it is a target; ``t >= 0``: it is a merge token of target slot ``t``
  (``0`` until the assignment; unused when ``k_ctx == 0``).
- ``targets[b, s, t]``: the token index of target slot ``t``, one copy per plan program ``s``, so that
  each program reads back only what it wrote itself; the apply reads copy ``0``.

Every quantity that decides an index follows the contract's float32 order: sequential loops over
heads, queries and key channels, one rounding per product and per sum. No product may be fused into
a sum, so products, quotients and square roots are the correctly rounded helpers of
``ops/triton_math.py``.
"""
import triton
import triton.language as tl

from ..triton_math import div_rn, dot_f32, helper, mul_rn, round_to, sqrt_rn

# Loops over key channels and queries are unrolled this many times: several loads in flight at once.
UNROLL = tl.constexpr(4)


@helper
def _head_column(head_ptr, query_stride, token_stride, tok, valid, n_tokens):
    """One head's attention received by each token ``tok``, summed over queries in query order."""
    column = tl.load(head_ptr + tok * token_stride, mask=valid, other=0.0).to(tl.float32)
    for query in tl.range(1, n_tokens, loop_unroll_factor=UNROLL):
        row = head_ptr + tl.cast(query, tl.int64) * query_stride
        column += tl.load(row + tok * token_stride, mask=valid, other=0.0).to(tl.float32)
    return column


@helper
def _token_scores(
    attn_ptr, head_stride, query_stride, token_stride, tok, valid, n_tokens,
    ATTN_LAYOUT: tl.constexpr, ATTN_HEADS: tl.constexpr,
):
    """Scores ``[BLOCK_N]`` float32 of tokens ``tok`` (int64) of one image (``attn_ptr`` at it).

    ATTN_LAYOUT 0: ``[B, N]`` scores as given; 1: per-head rows (a ``[B, H, N]`` row, or row 0 of a
    ``[B, H, N, N]`` map), summed over heads in head order; 2: a ``[B, H, N, N]`` map without CLS,
    each head's column summed over queries in query order, then over heads in head order.
    """
    if ATTN_LAYOUT == 0:
        score = tl.load(attn_ptr + tok * token_stride, mask=valid, other=0.0).to(tl.float32)
    elif ATTN_LAYOUT == 1:
        score = tl.load(attn_ptr + tok * token_stride, mask=valid, other=0.0).to(tl.float32)
        for h in tl.static_range(1, ATTN_HEADS):
            row = attn_ptr + tl.full([], h, tl.int64) * head_stride
            score += tl.load(row + tok * token_stride, mask=valid, other=0.0).to(tl.float32)
    else:
        score = _head_column(attn_ptr, query_stride, token_stride, tok, valid, n_tokens)
        for h in tl.static_range(1, ATTN_HEADS):
            head = attn_ptr + tl.full([], h, tl.int64) * head_stride
            score += _head_column(head, query_stride, token_stride, tok, valid, n_tokens)
    return score


@helper
def _select_dominant(score, tok, valid, k_dom, HAS_CLS: tl.constexpr):
    """Mask of the ``k_dom`` best-ranked valid tokens: highest score first, equal scores to the
    lower index, non-finite scores below every finite one, the CLS token (0) above all.

    Each score becomes an int32 key ordered like the float (with -0.0 and +0.0 one key). A bitwise
    search (at most 32 block-wide counts) finds the ``k_dom``-th largest key, or stops early at a
    value with exactly ``k_dom`` keys at or above it; the tokens above that value are kept, and of
    those equal to it the lowest-indexed ones that complete ``k_dom``.
    """
    ranked = tl.where(tl.abs(score) < float("inf"), score, float("-inf"))
    if HAS_CLS:
        ranked = tl.where(tok == 0, float("inf"), ranked)
    ranked = tl.where(ranked == 0.0, 0.0, ranked)
    bits = ranked.to(tl.int32, bitcast=True)
    key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(tl.int64)

    kth = tl.full([], -2147483648, tl.int64)  # at least k_dom valid keys are >= kth throughout
    step = tl.full([], 2147483648, tl.int64)
    while step > 0:
        candidate = kth + step
        at_least = tl.sum((valid & (key >= candidate)).to(tl.int32), axis=0)
        kth = tl.where(at_least >= k_dom, candidate, kth)
        step = tl.where(at_least == k_dom, 0, step >> 1)  # exactly k_dom at or above: decided

    above = valid & (key > kth)
    tied = (valid & (key == kth)).to(tl.int32)
    quota = k_dom - tl.sum(above.to(tl.int32), axis=0)
    tied_before = tl.cumsum(tied, axis=0) - tied
    return above | ((tied > 0) & (tied_before < quota))


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
def _key_norms(rows, head_stride, channel_stride, mask, key_width, KEY_HEADS: tl.constexpr):
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
def _assign_block(
    key_ptr, head_stride, token_stride, channel_stride, destination_ptr, target_ptr,
    block, n_tokens, key_width, k_ctx,
    KEY_HEADS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Assign the merge tokens of token block ``block`` of one image to their targets.

    Similarities are dot products of unit keys in channel order, over ``BLOCK_T`` targets at a time;
    the best target is the largest similarity, equal ones to the lower target, NaN below every
    number. Writes each merge token's target slot into ``destination``.
    """
    tok = block * BLOCK_M + tl.arange(0, BLOCK_M)
    valid = tok < n_tokens
    destination = tl.load(destination_ptr + tok, mask=valid, other=-1)
    rows = key_ptr + tok.to(tl.int64) * token_stride
    norm = _key_norms(rows, head_stride, channel_stride, valid, key_width, KEY_HEADS)

    best = tl.full([BLOCK_M], float("-inf"), tl.float32)
    best_slot = tl.zeros([BLOCK_M], tl.int32)
    for first_slot in range(0, k_ctx, BLOCK_T):
        slot = first_slot + tl.arange(0, BLOCK_T)
        has_slot = slot < k_ctx
        target_tok = tl.load(target_ptr + slot, mask=has_slot, other=0)
        target_rows = key_ptr + target_tok.to(tl.int64) * token_stride
        target_norm = _key_norms(target_rows, head_stride, channel_stride, has_slot, key_width, KEY_HEADS)
        sim = tl.zeros([BLOCK_M, BLOCK_T], tl.float32)
        for channel in tl.range(0, key_width, loop_unroll_factor=UNROLL):
            unit = _unit(_metric(rows, channel, head_stride, channel_stride, valid, KEY_HEADS), norm)
            target_unit = _unit(
                _metric(target_rows, channel, head_stride, channel_stride, has_slot, KEY_HEADS), target_norm
            )
            sim += mul_rn(unit[:, None], target_unit[None, :])
        sim = tl.where(has_slot[None, :] & (sim == sim), sim, float("-inf"))
        block_best = tl.max(sim, axis=1)
        block_slot = tl.min(tl.where(sim == block_best[:, None], slot[None, :], 2147483647), axis=1)
        better = block_best > best
        best = tl.where(better, block_best, best)
        best_slot = tl.where(better, block_slot, best_slot)
    tl.store(destination_ptr + tok, best_slot, mask=valid & (destination >= 0))


@triton.jit
def plan_kernel(
    attn_ptr, attn_batch_stride, attn_head_stride, attn_query_stride, attn_token_stride,
    key_ptr, key_batch_stride, key_head_stride, key_token_stride, key_channel_stride,
    dominant_ptr, destination_ptr, target_ptr,
    n_tokens, key_width, k_dom, k_ctx, step,
    ATTN_LAYOUT: tl.constexpr, ATTN_HEADS: tl.constexpr, HAS_CLS: tl.constexpr, KEY_HEADS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Program ``(b, s)``: the dominant indices, destinations and target assignment of image ``b``'s
    token blocks ``s, s + S, ...``.

    attn: one of ``_token_scores``' layouts, any float dtype, read through its strides (int64
    offsets). keys: ``[B, H, N, Dk]`` (``KEY_HEADS = H``), or ``[B, N, Dk]`` keys or hidden states
    (``KEY_HEADS = 1``, head stride unused), any float dtype, through strides. dominant: ``[B, k_dom]``
    int64, contiguous. destination: ``[B, N]`` int32 and targets: ``[B, S, max(k_ctx, 1)]`` int32, both
    contiguous (see the module docstring). ``step = max(1, (N - k_dom) // k_ctx)``.
    ``BLOCK_N >= N`` (a power of two): the whole image's scores are one block.
    """
    b = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1)
    n_plan_programs = tl.num_programs(1)
    tok = tl.arange(0, BLOCK_N)
    valid = tok < n_tokens
    score = _token_scores(
        attn_ptr + b * attn_batch_stride, attn_head_stride, attn_query_stride, attn_token_stride,
        tok.to(tl.int64), valid, n_tokens, ATTN_LAYOUT, ATTN_HEADS,
    )
    keep = _select_dominant(score, tok, valid, k_dom, HAS_CLS)

    kept = keep.to(tl.int32)
    dominant_slot = tl.cumsum(kept, axis=0) - kept
    remaining_pos = tok - dominant_slot
    is_target = valid & ~keep & (remaining_pos % step == 0) & (remaining_pos < k_ctx * step)
    own = (tok // BLOCK_M) % n_plan_programs == s
    destination_ptr += b * n_tokens
    target_ptr += (b * n_plan_programs + s) * tl.maximum(k_ctx, 1)
    tl.store(dominant_ptr + b * k_dom + dominant_slot, tok.to(tl.int64), mask=keep & own)
    destination = tl.where(keep, -2 - dominant_slot, tl.where(is_target, -1, 0))
    tl.store(destination_ptr + tok, destination, mask=valid & own)
    tl.store(target_ptr + remaining_pos // step, tok, mask=is_target)

    if k_ctx > 0:
        tl.debug_barrier()  # this program's destination and target writes, read back below
        for block in range(s, tl.cdiv(n_tokens, BLOCK_M), n_plan_programs):
            _assign_block(
                key_ptr + b * key_batch_stride, key_head_stride, key_token_stride, key_channel_stride,
                destination_ptr, target_ptr, block, n_tokens, key_width, k_ctx, KEY_HEADS, BLOCK_M, BLOCK_T,
            )


@triton.jit
def apply_kernel(
    hidden_ptr, hidden_batch_stride, hidden_token_stride, hidden_channel_stride,
    destination_ptr, target_ptr, out_ptr, out_batch_stride, out_token_stride,
    n_tokens, width, k_dom, k_ctx, n_plan_programs,
    HAS_CONTEXT: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Program ``(b, c, t)``: channels ``[c * BLOCK_C, (c + 1) * BLOCK_C)`` of image ``b``'s output.

    Streams the image's rows ``BLOCK_J`` at a time: programs with ``t == 0`` copy the dominant rows
    exactly; each program sums the merge rows of its ``BLOCK_T`` target slots with a one-hot
    ``tl.dot`` (float32 accumulation, exact products for finite values), then writes
    ``hidden[target] + sum / members`` (``hidden[target]`` where there are none), rounded once to
    the output dtype. hidden: ``[B, N, D]`` any float dtype, through strides; out: ``[B, k_dom +
    k_ctx, D]`` hidden's dtype, unit channel stride; destination and targets: the plan's workspaces.
    """
    b = tl.program_id(0).to(tl.int64)
    channel = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    has_channel = channel < width
    slot = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)
    has_slot = slot < k_ctx
    copies_dominant = tl.program_id(2) == 0
    hidden = hidden_ptr + b * hidden_batch_stride + channel.to(tl.int64)[None, :] * hidden_channel_stride
    out = out_ptr + b * out_batch_stride + channel[None, :]
    destination_ptr += b * n_tokens

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
            dominant_row = (-2 - destination).to(tl.int64)[:, None] * out_token_stride
            tl.store(out + dominant_row, rows, mask=(destination <= -2)[:, None] & has_channel[None, :])
        if HAS_CONTEXT:
            member = destination[None, :] == slot[:, None]
            # One-hot [T, J] x rows [J, C] into float32 sums: tensor cores for 16-bit rows.
            sums = dot_f32(member, rows, sums)
            members += tl.sum(member.to(tl.float32), axis=1)

    if HAS_CONTEXT:
        target_tok = tl.load(target_ptr + b * n_plan_programs * k_ctx + slot, mask=has_slot, other=0)
        mask = has_slot[:, None] & has_channel[None, :]
        target = tl.load(hidden + target_tok.to(tl.int64)[:, None] * hidden_token_stride, mask=mask, other=0.0)
        merged = target.to(tl.float32) + sums / tl.maximum(members, 1.0)[:, None]
        out_row = (k_dom + slot).to(tl.int64)[:, None] * out_token_stride
        tl.store(out + out_row, round_to(merged, out_ptr.dtype.element_ty), mask=mask)
