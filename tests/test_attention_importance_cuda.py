"""The CUDA C++ backend of attention_importance (csrc/attention_importance_cuda.cu).

On any machine: the backend's registration, its place in ``"auto"``'s order on CUDA, its fake
kernel, and its refusal of CPU tensors. On a GPU with the extension built (``cuda`` marker, skipped
otherwise): parity with the float64 truth of ``importance_cases.py`` (same tolerance as every
backend) over every N, hd, dtype, with and without CLS and ``lse``, on the encoder's token-major
views; the other kernel paths (element-wise loads for misaligned, padded, hd-strided and
broadcast inputs; the CUDA-core passes for hd > 128); NaN and infinities as the reference has
them; op.py's error messages from the C++ entry point; opcheck; CUDA-graph capture and replay;
run-to-run determinism and the memory bound. The kernels' logic also runs on the CPU in
``test_attention_importance_cuda_emulated.py``.
"""
from __future__ import annotations

import itertools

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import visionzip_kernels.backends
from importance_cases import ATOL, DTYPES, HEAD_DIMS, RTOL, TOKENS, check_parity, exact_importance, make_case
from visionzip_kernels import _extension, attention_importance
from visionzip_kernels.ops.attention_importance import available_backends
from visionzip_kernels.ops.attention_importance.op import BACKENDS, check_attention_importance_args

needs_extension = pytest.mark.skipif(
    not _extension.CUDA_EXTENSION_BUILT, reason="the CUDA extension visionzip_kernels._C_cuda was not built"
)
CUDA_OP = torch.ops.visionzip._attention_importance_cuda.default


# ---- Any machine ----


def test_cuda_backend_is_registered_with_its_schema():
    assert "cuda" in BACKENDS.names
    assert str(CUDA_OP._schema) == (
        "visionzip::_attention_importance_cuda(Tensor q, Tensor k, bool has_cls, float scale, *, "
        "Tensor? lse=None) -> Tensor"
    )


@pytest.mark.parametrize("built", (True, False), ids=("built", "not-built"))
def test_auto_prefers_cuda_where_built(monkeypatch, built):
    """On CUDA: the CUDA C++ backend first where the extension is built, then Triton."""
    monkeypatch.setattr(_extension, "CUDA_EXTENSION_BUILT", built)
    monkeypatch.setattr(visionzip_kernels.backends, "triton_importable", lambda: True)
    monkeypatch.setattr(visionzip_kernels.backends, "triton_interpreter_on", lambda: False)
    expected = ["triton", "blockwise", "reference"]
    assert available_backends("cuda") == (["cuda"] + expected if built else expected)
    assert "cuda" not in available_backends("cpu")


def test_cuda_backend_refuses_cpu_tensors():
    q, k, *_ = make_case(1, 2, 5, 64, torch.float32)
    with pytest.raises(ValueError, match="backend='cuda' is not available on cpu: it runs on cuda tensors only"):
        attention_importance(q, k, backend="cuda")
    with pytest.raises(NotImplementedError, match="_attention_importance_cuda"):
        CUDA_OP(q, k, True, 0.125)


def test_fake_kernel_gives_shape_and_validates():
    q, k, *_ = make_case(2, 3, 65, 72, torch.bfloat16)
    with FakeTensorMode() as mode:
        fake_q, fake_k = mode.from_tensor(q), mode.from_tensor(k)
        out = CUDA_OP(fake_q, fake_k, False, 0.1)
        assert out.shape == (2, 3, 65) and out.dtype == torch.float32
        with pytest.raises(ValueError, match="`k` must have the shape of `q`"):
            CUDA_OP(fake_q, fake_k[:, :, :5], False, 0.1)


# ---- GPU ----

GPU_PARITY = [
    pytest.param(n, hd, dtype, has_cls, with_lse, id=f"N{n}-hd{hd}-{str(dtype)[6:]}-{cls}-{lse}")
    for n, hd, dtype, (has_cls, cls), (with_lse, lse) in itertools.product(
        TOKENS, HEAD_DIMS, DTYPES, ((True, "cls"), (False, "nocls")), ((False, "nolse"), (True, "lse"))
    )
]


@pytest.mark.cuda
@needs_extension
@pytest.mark.parametrize("n_tokens, head_dim, dtype, has_cls, with_lse", GPU_PARITY)
def test_parity(n_tokens, head_dim, dtype, has_cls, with_lse):
    check_parity("cuda", "cuda", n_tokens, head_dim, dtype, has_cls, with_lse)


@pytest.mark.cuda
@needs_extension
def test_auto_picks_cuda_on_gpu():
    assert available_backends("cuda")[0] == "cuda"


def _layout(name: str, batch: int, heads: int, n_tokens: int, head_dim: int, dtype, gen) -> torch.Tensor:
    """[B, H, N, hd] CUDA tensors whose rows cannot all be read as aligned 16-byte vectors, or can
    through a zero stride."""
    def draw(*shape):
        return torch.randn(*shape, generator=gen).mul(1.4).to(dtype).cuda()

    if name == "misaligned":  # contiguous, one element into its storage
        return draw(batch * heads * n_tokens * head_dim + 1)[1:].view(batch, heads, n_tokens, head_dim)
    if name == "padded":  # token-major rows of hd + 1 elements
        return draw(batch, n_tokens, heads, head_dim + 1)[..., :head_dim].transpose(1, 2)
    if name == "dim_strided":  # hd stride N
        return draw(batch, heads, head_dim, n_tokens).transpose(2, 3)
    if name == "broadcast":  # one image's projections for every image: batch stride 0
        return draw(1, n_tokens, heads, head_dim).transpose(1, 2).expand(batch, -1, -1, -1)
    raise ValueError(name)


@pytest.mark.cuda
@needs_extension
@pytest.mark.parametrize("layout", ("misaligned", "padded", "dim_strided", "broadcast"))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("has_cls", (True, False), ids=("cls", "nocls"))
def test_other_layouts(layout, dtype, has_cls):
    gen = torch.Generator().manual_seed(7)
    q = _layout(layout, 2, 3, 131, 72, dtype, gen)
    k = _layout(layout, 2, 3, 131, 72, dtype, gen)
    out = attention_importance(q, k, has_cls, backend="cuda")
    torch.testing.assert_close(out.cpu().double(), exact_importance(q, k, has_cls), rtol=RTOL, atol=ATOL)


@pytest.mark.cuda
@needs_extension
@pytest.mark.parametrize("head_dim", (24, 136, 200))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("has_cls", (True, False), ids=("cls", "nocls"))
@pytest.mark.parametrize("with_lse", (False, True), ids=("nolse", "lse"))
def test_other_head_dims(head_dim, dtype, has_cls, with_lse):
    """hd = 24 pads to 32 on the tensor cores; hd > 128 takes the CUDA-core passes."""
    check_parity("cuda", "cuda", 97, head_dim, dtype, has_cls, with_lse, shape=(2, 2))


@pytest.mark.cuda
@needs_extension
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("has_cls", (True, False), ids=("cls", "nocls"))
def test_nan_and_inf_as_the_reference(dtype, has_cls):
    q, k, *_ = make_case(2, 3, 70, 64, dtype, seed=4)
    q, k = q.clone(), k.clone()
    q[0, 0, 0 if has_cls else 3, 5] = float("nan")
    k[0, 1, 7, 2] = float("inf")
    k[1, 2, 9, 0] = float("-inf")
    out = attention_importance(q.cuda(), k.cuda(), has_cls, backend="cuda").cpu().double()
    exact = exact_importance(q, k, has_cls)
    assert torch.equal(out.isnan(), exact.isnan())
    assert out[0, 0].isnan().all()
    finite = ~exact.isnan()
    torch.testing.assert_close(out[finite], exact[finite], rtol=RTOL, atol=ATOL)


def _bad_cases():
    q, k, _, _, lse = make_case(2, 3, 9, 16, torch.float32)
    q, k, lse = q.cuda(), k.cuda(), lse.cuda()
    return [
        ("q float64", dict(q=q.double(), k=k.double())),
        ("q rank 3", dict(q=q[0], k=k[0])),
        ("q empty", dict(q=q[:, :, :0], k=k[:, :, :0])),
        ("k other N", dict(k=k[:, :, :5])),
        ("k other dtype", dict(k=k.half())),
        ("k on cpu", dict(k=k.cpu())),
        ("q on cpu", dict(q=q.cpu())),
        ("scale inf", dict(scale=float("inf"))),
        ("scale nan", dict(scale=float("nan"))),
        ("lse shape", dict(lse=lse[:, :, :8])),
        ("lse dtype", dict(lse=lse.half())),
        ("lse on cpu", dict(lse=lse.cpu())),
    ], q, k


@pytest.mark.cuda
@needs_extension
def test_entry_point_raises_op_py_errors():
    cases, q, k = _bad_cases()
    for name, overrides in cases:
        args = dict(q=q, k=k, scale=0.25, lse=None) | overrides
        with pytest.raises((TypeError, ValueError)) as expected:
            check_attention_importance_args(args["q"], args["k"], True, args["scale"], args["lse"])
        with pytest.raises(expected.type) as raised:
            CUDA_OP(args["q"], args["k"], True, args["scale"], lse=args["lse"])
        assert str(expected.value) in str(raised.value), name


@pytest.mark.cuda
@needs_extension
@pytest.mark.parametrize("has_cls", (True, False), ids=("cls", "nocls"))
@pytest.mark.parametrize("with_lse", (False, True), ids=("nolse", "lse"))
@pytest.mark.parametrize("head_dim", (72, 136))
def test_opcheck(has_cls, with_lse, head_dim):
    q, k, _, _, lse = make_case(2, 3, 65, head_dim, torch.bfloat16)
    kwargs = {"lse": lse.cuda() if with_lse else None}
    torch.library.opcheck(CUDA_OP, (q.cuda(), k.cuda(), has_cls, head_dim**-0.5), kwargs)


@pytest.mark.cuda
@needs_extension
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_cuda_graph_replay_follows_the_inputs(dtype):
    q, k, _, _, lse = (t.cuda() for t in make_case(2, 16, 577, 64, dtype))

    def all_paths():
        return tuple(
            attention_importance(q, k, has_cls, lse=given, backend="cuda")
            for has_cls, given in ((True, None), (True, lse), (False, None), (False, lse))
        )

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        all_paths()  # warm-up outside the capture, as torch.cuda.graphs requires
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = all_paths()

    for seed in (1, 2):
        fresh_q, fresh_k, _, _, fresh_lse = make_case(2, 16, 577, 64, dtype, seed=seed)
        q.copy_(fresh_q)
        k.copy_(fresh_k)
        lse.copy_(fresh_lse)
        graph.replay()
        for replayed, eager in zip(captured, all_paths()):
            torch.testing.assert_close(replayed, eager, rtol=0, atol=0)


@pytest.mark.cuda
@needs_extension
@pytest.mark.parametrize("has_cls", (True, False), ids=("cls", "nocls"))
def test_deterministic_and_within_memory_bound(has_cls):
    batch, heads, n_tokens = 4, 16, 729
    q, k, *_ = (t.cuda() for t in make_case(batch, heads, n_tokens, 72, torch.bfloat16))
    first = attention_importance(q, k, has_cls, backend="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    second = attention_importance(q, k, has_cls, backend="cuda")
    torch.cuda.synchronize()
    assert torch.equal(first, second)
    row_bytes = batch * heads * n_tokens * 4
    assert torch.cuda.max_memory_allocated() - before <= 2 * row_bytes + (1 << 20)  # output and lse, rounded up


@pytest.mark.cuda
@needs_extension
@pytest.mark.parametrize("has_cls", (True, False), ids=("cls", "nocls"))
def test_offsets_past_2_31_elements(has_cls):
    """Image 1 starts 2**31 elements after image 0 (two 4 GiB bfloat16 buffers)."""
    n_tokens, head_dim, image = 129, 64, 129 * 64
    gen = torch.Generator(device="cuda").manual_seed(8)

    def spread_out():
        storage = torch.empty(2**31 + image, dtype=torch.bfloat16, device="cuda")
        for start in (0, 2**31):
            storage[start : start + image] = torch.randn(image, generator=gen, device="cuda").mul(1.4).bfloat16()
        return storage.as_strided((2, 1, n_tokens, head_dim), (2**31, image, head_dim, 1))

    q, k = spread_out(), spread_out()
    out = attention_importance(q, k, has_cls, backend="cuda")
    torch.testing.assert_close(out.cpu().double(), exact_importance(q, k, has_cls), rtol=RTOL, atol=ATOL)
