"""Tests of ``attention_importance``: parity, memory, validation, op registration.

Every backend is held to the float64 evaluation of ``importance_cases.py`` (``rtol = 2e-5``,
``atol = 1e-9`` for all three input dtypes) on the encoder's token-major layout. The Triton tests
run through Triton's interpreter on CPU tensors (a subprocess with ``TRITON_INTERPRET=1`` on a
machine with CUDA) on a subset of the shapes that still covers every ``N`` and ``hd``, and on the
GPU under the ``cuda`` marker. The CUDA C++ backend has its own files
(``test_attention_importance_cuda.py``, ``test_attention_importance_cuda_emulated.py``).
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import visionzip_kernels.backends
from importance_cases import ATOL, DTYPES, HEAD_DIMS, RTOL, TOKENS, check_parity, make_case
from visionzip_kernels import attention_importance
from visionzip_kernels.backends import triton_interpreter_on
from visionzip_kernels.ops.attention_importance import available_backends

INTERPRETED = triton_interpreter_on()
CPU_BACKENDS = ("reference", "blockwise", "triton") if INTERPRETED else ("reference", "blockwise")


CPU_PARITY = [
    pytest.param(
        backend, n, hd, dtype, has_cls, with_lse, id=f"{backend}-N{n}-hd{hd}-{str(dtype)[6:]}-{cls}-{lse}"
    )
    for backend, n, hd, dtype, (has_cls, cls), (with_lse, lse) in itertools.product(
        ("reference", "blockwise"), TOKENS, HEAD_DIMS, DTYPES,
        ((True, "cls"), (False, "nocls")), ((False, "nolse"), (True, "lse")),
    )
]


@pytest.mark.parametrize("backend, n_tokens, head_dim, dtype, has_cls, with_lse", CPU_PARITY)
def test_parity_cpu_backends(backend, n_tokens, head_dim, dtype, has_cls, with_lse):
    check_parity(backend, "cpu", n_tokens, head_dim, dtype, has_cls, with_lse)


# The interpreter takes about a second per head for N = 1025 without CLS: every hd and dtype at
# N = 5 and 65, then one (hd, dtype) per larger N, one image of one head.
INTERPRETER_SMALL = list(itertools.product((5, 65), HEAD_DIMS, DTYPES))
INTERPRETER_LARGE = [
    (577, 64, torch.bfloat16),
    (729, 72, torch.float16),
    (729, 128, torch.float32),
    (1025, 80, torch.float32),
]
INTERPRETER_PARITY = [
    pytest.param(n, hd, dtype, has_cls, with_lse, id=f"N{n}-hd{hd}-{str(dtype)[6:]}-{cls}-{lse}")
    for (n, hd, dtype), (has_cls, cls), (with_lse, lse) in itertools.product(
        INTERPRETER_SMALL + INTERPRETER_LARGE,
        ((True, "cls"), (False, "nocls")), ((False, "nolse"), (True, "lse")),
    )
]

if INTERPRETED:

    @pytest.mark.parametrize("n_tokens, head_dim, dtype, has_cls, with_lse", INTERPRETER_PARITY)
    def test_parity_triton_interpreter(n_tokens, head_dim, dtype, has_cls, with_lse):
        shape = None if n_tokens < 100 else (1, 1)
        check_parity("triton", "cpu", n_tokens, head_dim, dtype, has_cls, with_lse, shape)

else:

    def test_triton_interpreter_in_subprocess():
        """On a machine with CUDA, the interpreter tests run in a process that does not see it."""
        env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
        result = subprocess.run(
            [sys.executable, "-m", "pytest", __file__, "-x", "-q", "-p", "no:cacheprovider",
             "-k", "triton or interpreter"],
            env=env, capture_output=True, text=True,
        )
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("has_cls", (True, False), ids=("cls", "nocls"))
def test_contiguous_inputs_and_explicit_scale(backend, has_cls):
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 3, 70, 24, generator=gen)
    k = torch.randn(2, 3, 70, 24, generator=gen)
    probs = (q.double() @ k.double().transpose(-1, -2) * 0.3).softmax(dim=-1)
    exact = probs[:, :, 0] if has_cls else probs.mean(dim=2)
    out = attention_importance(q, k, has_cls, 0.3, backend=backend)
    torch.testing.assert_close(out.double(), exact, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("has_cls", (True, False), ids=("cls", "nocls"))
def test_op_matches_python_function(has_cls):
    q, k, _, _, lse = make_case(2, 3, 65, 72, torch.float16)
    expected = attention_importance(q, k, has_cls, lse=lse)
    torch.testing.assert_close(torch.ops.visionzip.attention_importance(q, k, has_cls, lse=lse), expected)
    torch.testing.assert_close(torch.ops.visionzip.attention_importance(q, k, has_cls, None), expected)


def test_auto_backend_choice():
    assert available_backends("cpu")[0] == "blockwise"
    assert available_backends("meta") == ["blockwise", "reference"]


class AllocationRecorder(TorchDispatchMode):
    """Records the number of elements of every tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.numels: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.numels.extend(t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        return out


@pytest.mark.parametrize(
    "backend, n_tokens, heads",
    [("blockwise", 1025, 2)] + ([("triton", 577, 1)] if INTERPRETED else []),
)
@pytest.mark.parametrize("with_lse", (False, True), ids=("nolse", "lse"))
def test_no_cls_never_allocates_n_by_n(backend, n_tokens, heads, with_lse):
    q, k, _, exact_mean, lse = make_case(1, heads, n_tokens, 64, torch.float32)
    with AllocationRecorder() as recorder:
        out = attention_importance(q, k, False, lse=lse if with_lse else None, backend=backend)
    assert recorder.numels, "the recorder saw no allocation"
    assert max(recorder.numels) < n_tokens * n_tokens
    torch.testing.assert_close(out.double(), exact_mean, rtol=RTOL, atol=ATOL)


def test_allocation_recorder_sees_the_reference_map():
    q, k, _, _, _ = make_case(1, 2, 1025, 64, torch.float32)
    with AllocationRecorder() as recorder:
        attention_importance(q, k, False, backend="reference")
    assert max(recorder.numels) >= 1025 * 1025


@pytest.mark.parametrize("has_cls", (True, False), ids=("cls", "nocls"))
@pytest.mark.parametrize("with_lse", (False, True), ids=("nolse", "lse"))
def test_opcheck_cpu(has_cls, with_lse):
    q, k, _, _, lse = make_case(2, 3, 65, 72, torch.float32)
    kwargs = {"lse": lse} if with_lse else {}
    torch.library.opcheck(
        torch.ops.visionzip.attention_importance.default, (q, k, has_cls, None), kwargs
    )


def _tensors(shape=(2, 3, 9, 16), dtype=torch.float32):
    gen = torch.Generator().manual_seed(2)
    return torch.randn(shape, generator=gen).to(dtype), torch.randn(shape, generator=gen).to(dtype)


Q, K = _tensors()
BAD_INPUTS = [
    ("q not a tensor", dict(q=Q.tolist()), TypeError, "`q` must be a torch.Tensor"),
    ("k not a tensor", dict(k=None), TypeError, "`k` must be a torch.Tensor"),
    ("q int", dict(q=Q.long()), ValueError, "`q` must be float32, float16 or bfloat16"),
    ("q float64", dict(q=Q.double(), k=K.double()), ValueError, "`q` must be float32"),
    ("q rank 3", dict(q=Q[0], k=K[0]), ValueError, r"`q` must be \[B, H, N, hd\]"),
    ("k rank 5", dict(k=K[None]), ValueError, r"`k` must be \[B, H, N, hd\]"),
    ("q empty", dict(q=Q[:, :, :0], k=K[:, :, :0]), ValueError, "`q` must have N >= 1"),
    ("k other N", dict(k=K[:, :, :5]), ValueError, "`k` must have the shape of `q`"),
    ("k other hd", dict(k=K[..., :8]), ValueError, "`k` must have the shape of `q`"),
    ("k other dtype", dict(k=K.half()), ValueError, "`k` must have the dtype of `q`"),
    ("k other device", dict(k=K.to("meta")), ValueError, "`k` is on meta but `q` is on cpu"),
    ("has_cls int", dict(has_cls=1), TypeError, "`has_cls` must be a bool"),
    ("scale str", dict(scale="0.1"), TypeError, "`scale` must be a float or None"),
    ("scale bool", dict(scale=True), TypeError, "`scale` must be a float or None"),
    ("scale inf", dict(scale=float("inf")), ValueError, "`scale` must be finite"),
    ("lse not a tensor", dict(lse=[0.0]), TypeError, "`lse` must be a torch.Tensor or None"),
    ("lse shape", dict(lse=torch.zeros(2, 3, 8)), ValueError, r"`lse` must be \[B, H, N\] = \(2, 3, 9\)"),
    ("lse rank", dict(lse=torch.zeros(2, 3, 9, 1)), ValueError, r"`lse` must be \[B, H, N\]"),
    ("lse dtype", dict(lse=torch.zeros(2, 3, 9, dtype=torch.float16)), ValueError, "`lse` must be float32"),
    ("lse device", dict(lse=torch.zeros(2, 3, 9, device="meta")), ValueError, "`lse` is on meta"),
    ("backend name", dict(backend="gpu"), ValueError, "`backend` must be one of"),
    ("backend cuda on cpu", dict(backend="cuda"), ValueError,
     "backend='cuda' is not available on cpu: it runs on cuda tensors only"),
    ("backend device", dict(q=Q.to("meta"), k=K.to("meta"), backend="triton"), ValueError,
     "backend='triton' is not available on meta"),
]


@pytest.mark.parametrize("name, overrides, error, message", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_raise(name, overrides, error, message):
    args = dict(q=Q, k=K, has_cls=True, scale=None, lse=None, backend="auto") | overrides
    backend = args.pop("backend")
    with pytest.raises(error, match=message):
        attention_importance(**args, backend=backend)


def test_bad_input_raises_through_the_op():
    with pytest.raises(ValueError, match="`k` must have the shape of `q`"):
        torch.ops.visionzip.attention_importance(Q, K[:, :, :5])


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setattr(visionzip_kernels.backends, "triton_interpreter_on", lambda: False)
    with pytest.raises(ValueError, match="set TRITON_INTERPRET=1"):
        attention_importance(Q, K, backend="triton")


# GPU tests: every shape on the compiled Triton kernels.


@pytest.mark.cuda
@pytest.mark.parametrize("n_tokens", TOKENS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("has_cls", (True, False), ids=("cls", "nocls"))
@pytest.mark.parametrize("with_lse", (False, True), ids=("nolse", "lse"))
def test_parity_triton_cuda(n_tokens, head_dim, dtype, has_cls, with_lse):
    check_parity("triton", "cuda", n_tokens, head_dim, dtype, has_cls, with_lse)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ("auto", "reference"))
def test_parity_other_backends_cuda(backend):
    check_parity(backend, "cuda", 577, 64, torch.bfloat16, False, False)


@pytest.mark.cuda
def test_flash_attention_lse_is_accepted_cuda():
    q, k, _, exact_mean, _ = make_case(2, 3, 729, 72, torch.bfloat16)
    q, k = q.cuda(), k.cuda()
    _, lse, *_ = torch.ops.aten._scaled_dot_product_flash_attention(q, k, k, scale=72**-0.5)
    out = attention_importance(q, k, False, lse=lse)
    torch.testing.assert_close(out.cpu().double(), exact_mean, rtol=1e-4, atol=ATOL)


@pytest.mark.cuda
def test_no_cls_peak_memory_cuda():
    batch, heads, n_tokens = 2, 16, 4096
    gen = torch.Generator(device="cuda").manual_seed(3)
    q, k = (
        torch.randn(batch, heads, n_tokens, 64, generator=gen, device="cuda", dtype=torch.bfloat16)
        for _ in range(2)
    )
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    attention_importance(q, k, False)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    row_bytes = batch * heads * n_tokens * 4  # one float32 value per (b, h, token)
    assert extra <= 4 * row_bytes, f"{extra} bytes beyond the inputs; the N x N map is {row_bytes * n_tokens}"


@pytest.mark.cuda
@pytest.mark.parametrize("has_cls", (True, False), ids=("cls", "nocls"))
def test_opcheck_cuda(has_cls):
    q, k, _, _, lse = make_case(2, 3, 65, 72, torch.bfloat16)
    q, k, lse = q.cuda(), k.cuda(), lse.cuda()
    public_op = torch.ops.visionzip.attention_importance.default
    torch.library.opcheck(public_op, (q, k, has_cls, None), {"lse": lse})
    triton_op = torch.ops.visionzip._attention_importance_triton.default
    torch.library.opcheck(triton_op, (q, k, has_cls, 0.1), {"lse": None})


@pytest.mark.cuda
def test_compile_and_cuda_graph():
    q, k, exact_cls, exact_mean, _ = make_case(2, 3, 577, 64, torch.float16)
    q, k = q.cuda(), k.cuda()

    def both(q, k):
        op = torch.ops.visionzip.attention_importance
        return op(q, k, True), op(q, k, False)

    compiled = torch.compile(both, fullgraph=True)
    for out, exact in zip(compiled(q, k), (exact_cls, exact_mean)):
        torch.testing.assert_close(out.cpu().double(), exact, rtol=RTOL, atol=ATOL)

    both(q, k)  # compile the kernels before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = both(q, k)
    graph.replay()
    torch.cuda.synchronize()
    for out, exact in zip(captured, (exact_cls, exact_mean)):
        torch.testing.assert_close(out.cpu().double(), exact, rtol=RTOL, atol=ATOL)
