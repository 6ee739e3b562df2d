"""zip_tokens_varlen: the reference against zip_tokens per image, every backend against the
reference on packed random batches, budgets, validation and the op as PyTorch sees it."""
import zlib

import pytest
import torch
from varlen_cases import DTYPES, SIZES, assert_zip_varlen_matches_reference, make_packed

import visionzip_kernels as vz
from visionzip_kernels.ops.zip_tokens_varlen import available_backends, reference

BUDGETS = [(0.65, 0.05), (0.45, 0.1), (1, 0), (0, 1), (0.3, 0)]  # ints: the 1-token segment must fit


def budgets(sizes, dominant, contextual):
    k_dom = [dominant if isinstance(dominant, int) else int(dominant * size) for size in sizes]
    k_ctx = [contextual if isinstance(contextual, int) else max(int(contextual * size), 1) for size in sizes]
    return k_dom, k_ctx


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_keys", [True, False], ids=["keys", "hidden-metric"])
def test_reference_is_zip_tokens_per_image_in_raster_order(dtype, with_keys):
    """Each segment equals zip_tokens (no CLS) on that image alone, its rows put in index order."""
    sizes = (37, 90, 13)
    packed = make_packed(sizes, 24, 10, dtype, seed=11, with_keys=with_keys)
    k_dom, k_ctx = budgets(sizes, 0.45, 0.1)
    tokens, kept_idx, cu_kept = reference.zip_tokens_varlen(
        packed["hidden"], packed["importance"], packed["cu_seqlens"], list(sizes), k_dom, k_ctx, packed["keys"]
    )
    start = 0
    for segment, size in enumerate(sizes):
        piece = slice(start, start + size)
        keys = None if packed["keys"] is None else packed["keys"][None, piece]
        image_tokens, dominant_idx = vz.zip_tokens(
            packed["hidden"][None, piece], packed["importance"][None, piece], k_dom[segment], k_ctx[segment],
            keys, has_cls=False, backend="reference",
        )
        plan = vz.ops.zip_tokens.reference.plan_zip(
            packed["importance"][None, piece],
            vz.ops.zip_tokens.reference.merge_metric(packed["hidden"][None, piece], keys),
            k_dom[segment], k_ctx[segment], False,
        )
        image_idx = torch.cat([dominant_idx[0], plan.target_idx[0]])
        order = image_idx.argsort()
        out = slice(int(cu_kept[segment]), int(cu_kept[segment + 1]))
        assert torch.equal(kept_idx[out], image_idx[order] + start)
        assert torch.equal(tokens[out], image_tokens[0][order])
        start += size


@pytest.mark.parametrize("backend", available_backends("cpu"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dominant,contextual", BUDGETS, ids=str)
def test_backend_matches_reference(backend, dtype, dominant, contextual):
    packed = make_packed(SIZES, 40, 12, dtype, seed=zlib.crc32(f"{backend}{dtype}{dominant}".encode()))
    tokens, kept_idx, cu_kept = vz.zip_tokens_varlen(
        packed["hidden"], packed["importance"], packed["cu_seqlens"], dominant, contextual, packed["keys"],
        backend=backend,
    )
    k_dom, k_ctx = budgets(SIZES, dominant, contextual)
    assert_zip_varlen_matches_reference((tokens, kept_idx, cu_kept), packed, k_dom, k_ctx)


@pytest.mark.parametrize("backend", available_backends("cpu"))
def test_backend_ties_non_finite_and_hidden_metric(backend):
    """Equal importances go to the lower index, NaN/inf importances rank last, hidden as metric."""
    packed = make_packed((29, 46), 16, 8, torch.float32, seed=5, with_keys=False)
    importance = packed["importance"]
    importance[3:12] = 0.5
    importance[30:40] = 0.5
    importance[[0, 31, 50]] = torch.tensor([float("nan"), float("inf"), float("-inf")])
    outputs = vz.zip_tokens_varlen(
        packed["hidden"], importance, packed["cu_seqlens"], 0.4, 3, backend=backend
    )
    k_dom, k_ctx = budgets((29, 46), 0.4, 3)
    assert_zip_varlen_matches_reference(outputs, packed, k_dom, k_ctx)


def test_published_budget_rounding():
    sizes = (37, 1, 140, 49)
    packed = make_packed(sizes, 8, 4, torch.float32, seed=1)
    _, _, cu_kept = vz.zip_tokens_varlen(packed["hidden"], packed["importance"], packed["cu_seqlens"], 0.65, 0.05)
    kept = [int(0.65 * t) + max(int(0.05 * t), 1) for t in sizes]
    assert cu_kept.tolist() == [0, *torch.tensor(kept).cumsum(0).tolist()]
    assert kept == [24 + 1, 0 + 1, 91 + 7, 31 + 2]


def test_seqlens_given_with_cpu_cu_seqlens_and_int64_offsets():
    packed = make_packed(SIZES, 8, 4, torch.float32, seed=2)
    first = vz.zip_tokens_varlen(packed["hidden"], packed["importance"], packed["cu_seqlens"], 0.5, 1)
    second = vz.zip_tokens_varlen(
        packed["hidden"], packed["importance"], packed["cu_seqlens"].long(), 0.5, 1, seqlens=tuple(SIZES)
    )
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_empty_segment_and_empty_batch():
    packed = make_packed((5, 0, 7), 8, 4, torch.float32, seed=3)
    tokens, kept_idx, cu_kept = vz.zip_tokens_varlen(
        packed["hidden"], packed["importance"], packed["cu_seqlens"], 0.5, 0, packed["keys"]
    )
    assert cu_kept.tolist() == [0, 2, 2, 5] and tokens.shape == (5, 8)
    none = vz.zip_tokens_varlen(torch.zeros(0, 8), torch.zeros(0), torch.zeros(1, dtype=torch.int32), 2, 1)
    assert none[0].shape == (0, 8) and none[1].shape == (0,) and none[2].tolist() == [0]


BAD = [
    (dict(hidden=torch.zeros(4, 3, 2)), ValueError, "`hidden` must be \\[T_total, D\\]"),
    (dict(importance=torch.zeros(11)), ValueError, "`importance` must be \\[T_total\\] with T_total=12"),
    (dict(keys=torch.zeros(12, 0)), ValueError, "`keys` must have Dk >= 1"),
    (dict(cu_seqlens=torch.tensor([0.0, 12.0])), ValueError, "`cu_seqlens` must be int32 or int64"),
    (dict(cu_seqlens=torch.tensor([0, 5, 11])), ValueError, "segments hold 11 tokens"),
    (dict(cu_seqlens=torch.tensor([1, 5, 12])), ValueError, "`cu_seqlens` must start at 0"),
    (dict(cu_seqlens=torch.tensor([0, 7, 5, 12])), ValueError, "must be non-decreasing"),
    (dict(seqlens=[5, 6]), ValueError, "does not hold the offsets of `seqlens`"),
    (dict(seqlens=[12]), ValueError, "`seqlens` must hold one size per segment, 2"),
    (dict(seqlens=torch.tensor([5, 7])), TypeError, "`seqlens` must be a list or tuple"),
    (dict(dominant=True), TypeError, "`dominant` must be an int \\(tokens\\) or a float"),
    (dict(dominant=1.5), ValueError, "`dominant` as a fraction must be in \\[0, 1\\]"),
    (dict(contextual=-1), ValueError, "`contextual` must be >= 0 tokens"),
    (dict(dominant=5, contextual=1), ValueError, "segment 0 holds 5 tokens but keeps 5 dominant \\+ 1"),
    (dict(dominant=1.0), ValueError, "segment 0 holds 5 tokens but keeps 5 dominant \\+ 1"),
    (dict(hidden=torch.zeros(12, 8, dtype=torch.float64)), ValueError, "`hidden` must be float32"),
    (dict(importance=torch.zeros(12, device="meta")), ValueError, "`importance` is on meta"),
    (dict(backend="cuda-please"), ValueError, "`backend` must be one of"),
]


@pytest.mark.parametrize("bad,error,message", BAD, ids=lambda value: str(value)[:40])
def test_bad_input_names_the_argument(bad, error, message):
    args = dict(
        hidden=torch.randn(12, 8), importance=torch.rand(12), cu_seqlens=torch.tensor([0, 5, 12]),
        dominant=0.5, contextual=1, keys=torch.randn(12, 4), seqlens=None, backend="auto",
    )
    args.update(bad)
    with pytest.raises(error, match=message):
        vz.zip_tokens_varlen(
            args["hidden"], args["importance"], args["cu_seqlens"], args["dominant"], args["contextual"],
            args["keys"], seqlens=args["seqlens"], backend=args["backend"],
        )


def test_device_cu_seqlens_needs_host_seqlens():
    """A cu_seqlens on an accelerator is never read: without seqlens the call is refused."""
    hidden = torch.zeros(12, 8, device="meta")
    with pytest.raises(ValueError, match="must be given on the host as `seqlens`"):
        vz.zip_tokens_varlen(hidden, torch.zeros(12, device="meta"), torch.tensor([0, 5, 12], device="meta"), 0.5, 1)


CPP_BAD = [
    (dict(cu_seqlens=torch.tensor([0, 5, 11]), seqlens=[5, 6]), "seqlens must sum to T_total"),
    (dict(cu_seqlens=torch.tensor([0, 6, 12])), "cu_seqlens must hold the offsets of seqlens"),
    (dict(cu_seqlens=torch.tensor([0.0, 5.0, 12.0])), "cu_seqlens must be \\[n \\+ 1\\] int32 or int64"),
    (dict(k_ctx=[4, 1]), "every segment must keep between 0 and its size tokens"),
]


@pytest.mark.parametrize("bad,message", CPP_BAD, ids=lambda value: str(value)[:40])
def test_cpp_entry_point_refuses_what_its_kernels_rely_on(bad, message):
    """torch.ops' backend op checks its arguments itself (zip_tokens_varlen_checks.h)."""
    args = dict(cu_seqlens=torch.tensor([0, 5, 12]), seqlens=[5, 7], k_ctx=[1, 1])
    args.update(bad)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.visionzip._zip_tokens_varlen_cpu(
            torch.randn(12, 8), torch.rand(12), args["cu_seqlens"], args["seqlens"], [2, 2], args["k_ctx"], None
        )


@pytest.mark.parametrize("op_name", ["zip_tokens_varlen", "_zip_tokens_varlen_cpu", "_zip_tokens_varlen_triton"])
def test_opcheck(op_name):
    packed = make_packed((9, 14, 3), 16, 6, torch.bfloat16, seed=4)
    args = (packed["hidden"], packed["importance"], packed["cu_seqlens"], [9, 14, 3], [4, 6, 1], [2, 3, 1], packed["keys"])
    torch.library.opcheck(getattr(torch.ops.visionzip, op_name), args)


def test_torch_ops_matches_function_and_fake_gives_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    packed = make_packed((9, 14), 16, 6, torch.float32, seed=6)
    args = (packed["hidden"], packed["importance"], packed["cu_seqlens"])
    direct = vz.zip_tokens_varlen(*args, 4, 2, packed["keys"])
    via_ops = torch.ops.visionzip.zip_tokens_varlen(*args, [9, 14], [4, 4], [2, 2], packed["keys"])
    for a, b in zip(direct, via_ops):
        assert torch.equal(a, b)
    with FakeTensorMode():
        hidden, importance = torch.empty(300, 64, dtype=torch.float16), torch.empty(300)
        cu = torch.empty(3, dtype=torch.int32)
        tokens, kept_idx, cu_kept = torch.ops.visionzip.zip_tokens_varlen(hidden, importance, cu, [100, 200], [65, 130], [5, 10])
        assert tokens.shape == (210, 64) and tokens.dtype == torch.float16
        assert kept_idx.shape == (210,) and cu_kept.shape == (3,)
        with pytest.raises(ValueError, match="segment 1 holds 200 tokens"):
            torch.ops.visionzip.zip_tokens_varlen(hidden, importance, cu, [100, 200], [65, 195], [5, 10])


def test_torch_compile_fullgraph_through_torch_ops():
    packed = make_packed((9, 14), 16, 6, torch.float32, seed=7)

    def zipped_and_scaled(hidden, importance, cu_seqlens, keys):
        tokens, kept_idx, cu_kept = torch.ops.visionzip.zip_tokens_varlen(
            hidden, importance, cu_seqlens, [9, 14], [4, 4], [2, 2], keys
        )
        return tokens * 2.0, kept_idx, cu_kept

    compiled = torch.compile(zipped_and_scaled, fullgraph=True, backend="aot_eager")
    tokens, kept_idx, cu_kept = compiled(packed["hidden"], packed["importance"], packed["cu_seqlens"], packed["keys"])
    assert_zip_varlen_matches_reference((tokens / 2.0, kept_idx, cu_kept), packed, [4, 4], [2, 2])
