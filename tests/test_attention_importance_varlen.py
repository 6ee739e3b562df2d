"""attention_importance_varlen and pool_merge_units: every backend against a float64 evaluation on
packed random batches, against attention_importance per image, with and without lse; validation."""
import zlib

import pytest
import torch
from varlen_cases import DTYPES, SIZES, make_packed

import visionzip_kernels as vz
from visionzip_kernels.ops.attention_importance_varlen import available_backends, reference

# float32 scores, exponentials and sums on every backend: within float32 rounding of float64.
RTOL, ATOL = 2e-5, 1e-6


def segment_lse(q, k, sizes, scale):
    """[H, T] float32 log-sum-exp of each query row within its segment, as FlashAttention returns it."""
    rows, start = [], 0
    for size in sizes:
        scores = torch.einsum("ihd,jhd->hij", q[start : start + size].double(), k[start : start + size].double())
        rows.append(torch.logsumexp(scores * scale, dim=-1).float())
        start += size
    return torch.cat(rows, dim=1)


@pytest.mark.parametrize("backend", available_backends("cpu"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_lse", [False, True], ids=["two-pass", "lse"])
def test_backend_matches_float64(backend, dtype, with_lse):
    packed = make_packed(SIZES, 8, 4, dtype, seed=zlib.crc32(f"{backend}{dtype}{with_lse}".encode()), heads=3, head_dim=20)
    # q and k as views of one fused qkv tensor [T, 2, H, hd], and lse a transposed [T, H] buffer:
    # every backend reads its inputs through their strides.
    qkv = torch.stack([packed["q"], packed["k"]], dim=1)
    q, k, sizes = qkv[:, 0], qkv[:, 1], packed["seqlens"]
    scale = 0.3
    lse = segment_lse(q, k, sizes, scale).t().contiguous().t() if with_lse else None
    got = vz.attention_importance_varlen(q, k, packed["cu_seqlens"], scale, lse=lse, backend=backend)
    exact = reference.attention_importance_varlen(q, k, packed["cu_seqlens"], sizes, scale, lse, torch.float64)
    assert got.dtype == torch.float32 and got.shape == (sum(sizes),)
    torch.testing.assert_close(got.double(), exact, rtol=RTOL, atol=ATOL)


def test_reference_is_column_sum_of_attention_importance_per_image():
    """Per segment: attention_importance without CLS (the column mean) x T_i, mean over heads."""
    packed = make_packed((37, 90, 13), 8, 4, torch.float32, seed=9, heads=4, head_dim=16)
    got = vz.attention_importance_varlen(packed["q"], packed["k"], packed["cu_seqlens"], backend="reference")
    start = 0
    for size in (37, 90, 13):
        q = packed["q"][start : start + size].transpose(0, 1)[None]
        k = packed["k"][start : start + size].transpose(0, 1)[None]
        column_mean = vz.attention_importance(q, k, has_cls=False, backend="reference")[0]
        torch.testing.assert_close(got[start : start + size], column_mean.mean(0) * size, rtol=1e-5, atol=1e-6)
        assert abs(got[start : start + size].sum().item() - size) < 1e-3 * size
        start += size


def test_pool_merge_units_means_units_and_restores_raster_order():
    x = torch.randn(4 * 6, 3, 5)
    window_index = torch.tensor([2, 0, 5, 1, 4, 3])
    pooled = vz.pool_merge_units(x, window_index)
    for w, raster in enumerate(window_index.tolist()):
        torch.testing.assert_close(pooled[raster], x[4 * w : 4 * w + 4].mean(0))
    assert torch.equal(vz.pool_merge_units(x.half(), None), vz.pool_merge_units(x.half().float()))
    with pytest.raises(ValueError, match="multiple of unit=4 rows"):
        vz.pool_merge_units(x[:7])
    with pytest.raises(ValueError, match="`window_index` must be \\[N / unit\\] = \\[6\\]"):
        vz.pool_merge_units(x, window_index[:5])
    with pytest.raises(ValueError, match="`window_index` must be an integer tensor"):
        vz.pool_merge_units(x, window_index.float())


BAD = [
    (dict(q=torch.zeros(12, 2, 4, 1)), ValueError, "`q` must be \\[T_total, H, hd\\]"),
    (dict(k=torch.zeros(12, 2, 5)), ValueError, "`k` must have the shape of `q`"),
    (dict(k=torch.zeros(12, 2, 4, dtype=torch.float16)), ValueError, "`k` must have the dtype of `q`"),
    (dict(cu_seqlens=torch.tensor([0, 5, 13])), ValueError, "segments hold 13 tokens"),
    (dict(seqlens=[6, 6]), ValueError, "does not hold the offsets of `seqlens`"),
    (dict(lse=torch.zeros(12, 2)), ValueError, "`lse` must be \\[H, T_total\\] = \\(2, 12\\)"),
    (dict(lse=torch.zeros(2, 12, dtype=torch.float16)), ValueError, "`lse` must be float32"),
    (dict(scale=float("nan")), ValueError, "`scale` must be finite"),
    (dict(backend="nope"), ValueError, "`backend` must be one of"),
]


@pytest.mark.parametrize("bad,error,message", BAD, ids=lambda value: str(value)[:40])
def test_bad_input_names_the_argument(bad, error, message):
    args = dict(
        q=torch.randn(12, 2, 4), k=torch.randn(12, 2, 4), cu_seqlens=torch.tensor([0, 5, 12]),
        scale=None, seqlens=None, lse=None, backend="auto",
    )
    args.update(bad)
    with pytest.raises(error, match=message):
        vz.attention_importance_varlen(
            args["q"], args["k"], args["cu_seqlens"], args["scale"], seqlens=args["seqlens"], lse=args["lse"],
            backend=args["backend"],
        )


@pytest.mark.parametrize("op_name", ["attention_importance_varlen", "_attention_importance_varlen_triton"])
def test_opcheck(op_name):
    packed = make_packed((9, 14, 3), 8, 4, torch.bfloat16, seed=4, heads=2, head_dim=8)
    args = (packed["q"], packed["k"], packed["cu_seqlens"], [9, 14, 3], 0.5)
    torch.library.opcheck(getattr(torch.ops.visionzip, op_name), args)


def test_fake_kernel_gives_the_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(300, 16, 80, dtype=torch.bfloat16)
        out = torch.ops.visionzip.attention_importance_varlen(q, q, torch.empty(3, dtype=torch.int32), [100, 200])
        assert out.shape == (300,) and out.dtype == torch.float32
