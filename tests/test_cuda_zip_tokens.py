"""The CUDA C++ backend of zip_tokens (csrc/zip_tokens_cuda.cu) against the reference.

Indices exactly, values within zip_cases' tolerances, on every shared case and dtype; then what only
a GPU kernel must show: opcheck, CUDA-graph capture and replay, run-to-run determinism, values bit
for bit in the apply kernel's documented order, the same bits whatever launch shapes the batch size
picks (tiling independence), the largest supported sizes, strided and mixed-dtype inputs, ties and
non-finite values.
"""
from __future__ import annotations

import pytest
import torch

import visionzip_kernels as vz
from visionzip_kernels import _extension
from zip_apply_order import tokens_in_apply_order
from zip_cases import (
    DTYPES,
    EDGE_CASES,
    MODEL_CASES,
    SMALL_CASES,
    ZipCase,
    assert_matches_reference,
    make_inputs,
)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not _extension.CUDA_EXTENSION_BUILT, reason="the CUDA extension visionzip_kernels._C_cuda was not built"
    ),
]


def zip_cuda(inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return vz.zip_tokens(**inputs, backend="cuda")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", MODEL_CASES + SMALL_CASES + EDGE_CASES, ids=str)
def test_matches_reference(case, dtype):
    inputs = make_inputs(case, dtype, device="cuda")
    assert_matches_reference(*zip_cuda(inputs), inputs)


@pytest.mark.parametrize(
    "case",
    [
        ZipCase(2, 33, 40, 3, 12, 6, 4),
        ZipCase(2, 70, 96, 4, 16, 9, 7, has_cls=False, attn_layout="full", key_layout="heads"),
        ZipCase(2, 61, 48, 4, 16, 9, 0, attn_layout="scores", key_layout="none"),
    ],
    ids=str,
)
def test_opcheck(case):
    inputs = make_inputs(case, torch.bfloat16, device="cuda")
    args = tuple(inputs[name] for name in ("hidden", "attn", "k_dom", "k_ctx", "keys", "has_cls"))
    torch.library.opcheck(torch.ops.visionzip._zip_tokens_cuda, args)


def test_cuda_graph_replay_follows_the_inputs():
    case = ZipCase(2, 577, 1024, 16, 64, 54, 10, key_layout="heads")
    inputs = make_inputs(case, torch.bfloat16, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        zip_cuda(inputs)  # warm-up outside the capture, as torch.cuda.graphs requires
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = zip_cuda(inputs)

    for seed in (0, 1):
        fresh = make_inputs(case, torch.bfloat16, device="cuda", seed=seed)
        for name in ("hidden", "attn", "keys"):
            inputs[name].copy_(fresh[name])
        graph.replay()
        eager = zip_cuda(inputs)
        torch.testing.assert_close(captured[0], eager[0], atol=0, rtol=0)
        torch.testing.assert_close(captured[1], eager[1], atol=0, rtol=0)


@pytest.mark.parametrize(
    "case",
    [MODEL_CASES[0], MODEL_CASES[4], EDGE_CASES[-1], ZipCase(4, 700, 256, 4, 32, 30, 3, key_layout="none")],
    ids=str,
)
def test_deterministic(case):
    inputs = make_inputs(case, torch.float32, device="cuda")
    first = zip_cuda(inputs)
    for _ in range(3):
        again = zip_cuda(inputs)
        torch.testing.assert_close(again[0], first[0], atol=0, rtol=0)
        torch.testing.assert_close(again[1], first[1], atol=0, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", [MODEL_CASES[0], MODEL_CASES[3], EDGE_CASES[1], EDGE_CASES[-1]], ids=str)
def test_values_in_the_apply_kernels_order(case, dtype):
    """Bit for bit against the apply kernel's summation order (tests/zip_apply_order.py)."""
    inputs = make_inputs(case, dtype, device="cuda")
    tokens, _ = zip_cuda(inputs)
    on_cpu = {name: value.cpu() if isinstance(value, torch.Tensor) else value for name, value in inputs.items()}
    torch.testing.assert_close(tokens.cpu(), tokens_in_apply_order(on_cpu), atol=0, rtol=0)


def batch_of(inputs: dict, rows: slice | list[int]) -> dict:
    return {name: value[rows] if isinstance(value, torch.Tensor) else value for name, value in inputs.items()}


@pytest.mark.parametrize(
    "case",
    [
        ZipCase(8, 577, 1024, 16, 64, 54, 10, key_layout="heads"),
        ZipCase(8, 729, 1152, 16, 72, 108, 20, has_cls=False),
        ZipCase(8, 577, 1024, 16, 64, 162, 30, key_layout="none"),
    ],
    ids=str,
)
def test_launch_shapes_change_no_bit(case):
    """The launch shapes follow the batch size: positions per assign block (32 at B = 1, 256 at
    B = 256), the metric tile width (all the shared memory in one wave, a third beyond), the apply
    kernel's channel and row lanes. Each image's bits must not depend on them."""
    inputs = make_inputs(case, torch.bfloat16, device="cuda")
    large = batch_of(inputs, [i % case.batch for i in range(256)])
    tokens, idx = zip_cuda(large)
    for size in (1, 5, 32):
        part_tokens, part_idx = zip_cuda(batch_of(large, slice(0, size)))
        torch.testing.assert_close(part_idx, idx[:size], atol=0, rtol=0)
        torch.testing.assert_close(part_tokens, tokens[:size], atol=0, rtol=0)


@pytest.mark.parametrize(
    "case",
    [
        ZipCase(1, 4096, 4096, 4, 64, 512, 256),  # many target chunks, several rounds of work items
        ZipCase(1, 4096, 4096, 4, 64, 1000, 16, key_layout="none"),  # metric tiles narrower than D
        ZipCase(2, 4096, 256, 8, 64, 64, 300, has_cls=False, key_layout="heads"),
        ZipCase(1, 1024, 64, 4, 16, 100, 30, has_cls=False, attn_layout="full"),  # columns of 1024 queries
    ],
    ids=str,
)
def test_largest_supported_sizes(case):
    inputs = make_inputs(case, torch.bfloat16, device="cuda")
    assert_matches_reference(*zip_cuda(inputs), inputs)


def test_more_tokens_than_supported_is_an_error():
    inputs = make_inputs(ZipCase(1, 4097, 8, 1, 8, 2, 1, attn_layout="scores"), torch.float32, device="cuda")
    with pytest.raises(RuntimeError, match="at most 4096 tokens"):
        zip_cuda(inputs)


def transposed_storage(x: torch.Tensor, dims: tuple[int, int]) -> torch.Tensor:
    """The same values, stored with the two dims swapped (a non-contiguous view)."""
    return x.transpose(*dims).contiguous().transpose(*dims)


def offset_by_one(x: torch.Tensor) -> torch.Tensor:
    """The same values in a buffer one element further on: unit channel stride, not 16-byte aligned."""
    flat = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)
    view = flat[1:].view(x.shape)
    view.copy_(x)
    return view


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("key_layout", ["heads", "none"])
@pytest.mark.parametrize("layout", ["transposed", "sliced", "misaligned"])
def test_strided_inputs(layout, key_layout, dtype):
    case = ZipCase(2, 70, 96, 4, 16, 9, 7, has_cls=False, attn_layout="full", key_layout=key_layout)
    inputs = make_inputs(case, dtype, device="cuda")
    hidden, attn, keys = inputs["hidden"], inputs["attn"], inputs["keys"]
    if layout == "transposed":
        hidden = transposed_storage(hidden, (1, 2))
        attn = transposed_storage(attn, (2, 3))
        keys = None if keys is None else transposed_storage(keys, (1, 2))
    elif layout == "sliced":
        hidden = torch.cat([hidden, hidden], dim=2)[:, :, 8 : 8 + hidden.shape[2]]
        attn = torch.cat([attn, attn], dim=1)[:, ::2]
        keys = None if keys is None else torch.cat([keys, keys], dim=3)[..., : keys.shape[3]]
    else:
        hidden, attn = offset_by_one(hidden), offset_by_one(attn)
        keys = None if keys is None else offset_by_one(keys)
    assert not hidden.is_contiguous() or hidden.data_ptr() % 16 != 0
    inputs = {**inputs, "hidden": hidden, "attn": attn, "keys": keys}
    assert_matches_reference(*zip_cuda(inputs), inputs)


@pytest.mark.parametrize(
    "hidden_dtype, attn_dtype, keys_dtype",
    [
        (torch.bfloat16, torch.float32, torch.float16),
        (torch.float16, torch.bfloat16, torch.float32),
        (torch.float32, torch.float16, torch.bfloat16),
    ],
    ids=str,
)
@pytest.mark.parametrize("key_layout", ["avg", "heads"])
def test_mixed_dtypes(hidden_dtype, attn_dtype, keys_dtype, key_layout):
    case = ZipCase(2, 577, 1024, 16, 64, 54, 10, key_layout=key_layout)
    inputs = make_inputs(case, torch.float32, device="cuda")
    inputs = {
        **inputs,
        "hidden": inputs["hidden"].to(hidden_dtype),
        "attn": inputs["attn"].to(attn_dtype),
        "keys": inputs["keys"].to(keys_dtype),
    }
    assert_matches_reference(*zip_cuda(inputs), inputs)


@pytest.mark.parametrize("has_cls", [True, False])
def test_ties_signed_zeros_and_non_finite_values(has_cls):
    """Scores and keys from a few levels, so that many scores and similarities tie exactly."""
    gen = torch.Generator().manual_seed(7)
    case = ZipCase(3, 300, 64, 4, 16, 40, 12, has_cls=has_cls, attn_layout="scores")
    inputs = make_inputs(case, torch.float32, device="cuda")
    scores = torch.randint(0, 4, (3, 300), generator=gen).float() / 4
    scores[:, 100:140] = -scores[:, 100:140]  # -0.0 ties with +0.0
    scores[0, 0], scores[0, 5], scores[1, 7], scores[2, 9] = float("nan"), float("nan"), float("inf"), float("-inf")
    keys = torch.randint(-1, 2, (3, 300, 16), generator=gen).float()
    keys[:, ::7] = 0  # zero keys: unit key 0, similarity 0 to every target
    keys[1, 50] = float("inf")  # an infinite key: NaN similarities, ranked last
    inputs = {**inputs, "attn": scores.cuda(), "keys": keys.cuda()}
    assert_matches_reference(*zip_cuda(inputs), inputs)
