"""The kernels of the CUDA C++ backend of zip_tokens, run on the CPU.

``tests/cuda_emulation/run_zip_tokens.cpp`` compiles ``csrc/zip_tokens_cuda.cuh`` and
``csrc/zip_apply_cuda.cuh`` with the host stand-ins of ``tests/cuda_emulation/device_primitives_host.h``
(every CUDA thread an OS thread, barriers for __syncthreads and the warp exchanges, integer atomics,
poisoned shared memory, plan and outputs, alignment-checked 16-byte accesses) and launches the select,
assign and apply kernels with the launch shapes of ``csrc/zip_tokens_launch.h``, or explicit ones.

Checked here: indices exactly against the reference; dominant rows bit for bit; contextual rows bit
for bit against the apply kernel's documented order (``zip_apply_order.py``: pieces of 8 rows summed
in index order, folded in piece order), and within the parity tolerance of the reference; and tiling
independence: every launch shape (positions per assign block, metric tile width, targets per work item, channel and row
lanes, 16-byte or scalar path) gives the same bits. What only a GPU shows (real concurrency, the
hardware's own rounding intrinsics, speed) is left to ``test_cuda_zip_tokens.py``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from emulation_runners import compile_runner, run_runner, sanitizers
from zip_apply_order import tokens_in_apply_order
from zip_cases import ZipCase, assert_matches_reference, make_inputs

H100 = {"sm_count": 132, "shared_opt_in": 232448}
AUTO = {"positions_per_block": 0, "target_chunk": 0, "tile_channels": 0, "channel_lanes": 0, "row_lanes": 0}


@pytest.fixture(scope="module", params=sanitizers())
def runner(request, tmp_path_factory) -> Path:
    return compile_runner("run_zip_tokens", tmp_path_factory.mktemp("emulation"), request.param)


def tensor_arg(tensor: torch.Tensor, path: Path) -> str:
    torch.empty(0, dtype=torch.uint8).set_(tensor.untyped_storage()).numpy().tofile(path)
    dtype = str(tensor.dtype).removeprefix("torch.")
    sizes = ",".join(map(str, tensor.shape))
    strides = ",".join(map(str, tensor.stride()))
    return f"{path}:{dtype}:{tensor.storage_offset()}:{sizes}:{strides}"


def run_emulated(runner: Path, workdir: Path, inputs: dict, device=H100, vectorise=True, **shapes):
    """(tokens in hidden's dtype, dominant_idx, printed launch shapes) of the emulated kernels."""
    hidden, keys = inputs["hidden"], inputs["keys"]
    batch, _, width = hidden.shape
    k_dom, k_ctx = inputs["k_dom"], inputs["k_ctx"]
    args = {
        "hidden": tensor_arg(hidden, workdir / "hidden.bin"),
        "attn": tensor_arg(inputs["attn"], workdir / "attn.bin"),
        "keys": "-" if keys is None else tensor_arg(keys, workdir / "keys.bin"),
        "k_dom": k_dom, "k_ctx": k_ctx, "has_cls": int(inputs["has_cls"]), "vectorise": int(vectorise),
        **device, **AUTO, **shapes,
        "tokens": workdir / "tokens.bin", "dominant_idx": workdir / "idx.bin",
    }
    command = [str(runner), *(f"{name}={value}" for name, value in args.items())]
    result = run_runner(command, workdir.name)
    tokens = torch.from_numpy(np.fromfile(workdir / "tokens.bin", dtype=np.float32))
    idx = torch.from_numpy(np.fromfile(workdir / "idx.bin", dtype=np.int64))
    tokens = tokens.view(batch, k_dom + k_ctx, width).to(hidden.dtype)  # exact: the values are hidden's dtype
    return tokens, idx.view(batch, k_dom), result.stdout


def assert_exact(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=0, rtol=0, equal_nan=True)


def misaligned(x: torch.Tensor) -> torch.Tensor:
    """The same values one element into a buffer: unit channel stride, no 16-byte rows."""
    flat = torch.empty(x.numel() + 1, dtype=x.dtype)
    view = flat[1:].view(x.shape)
    view.copy_(x)
    return view


# (case, dtype): every dtype, CLS and no CLS, each attention and key layout, a few edge budgets.
CASES = [
    (ZipCase(2, 70, 96, 4, 16, 9, 7), torch.bfloat16),
    (ZipCase(2, 70, 96, 4, 16, 9, 7, has_cls=False, attn_layout="full", key_layout="heads"), torch.float16),
    (ZipCase(1, 97, 40, 3, 24, 12, 5, key_layout="none"), torch.float32),
    (ZipCase(2, 61, 48, 4, 16, 40, 21, has_cls=False, attn_layout="scores"), torch.float16),  # every remaining a target
    (ZipCase(2, 61, 48, 4, 16, 20, 1, key_layout="heads"), torch.bfloat16),  # one target takes every merge token
    (ZipCase(1, 61, 48, 4, 16, 9, 0), torch.float32),  # k_ctx = 0
    (ZipCase(1, 300, 32, 2, 8, 40, 30, has_cls=False), torch.bfloat16),  # 3 target chunks, many pieces
    (ZipCase(1, 53, 12, 2, 8, 53, 0, has_cls=False), torch.float32),  # k_dom = N: no remaining token
    # LLaVA-NeXT's 2880 tokens (5 x 576) and the largest N: each select thread holds several tokens;
    # D = 20 and 36: no 16-byte rows, the scalar metric and apply paths; N a multiple of no tile.
    (ZipCase(1, 2880, 36, 2, 8, 54, 10), torch.bfloat16),
    (ZipCase(1, 4096, 20, 1, 12, 300, 45, has_cls=False, attn_layout="scores", key_layout="none"), torch.float16),
]


@pytest.mark.parametrize("case, dtype", CASES, ids=[f"{c}-{str(d)[6:]}" for c, d in CASES])
def test_emulated_kernels_match_reference(runner, tmp_path, case, dtype):
    inputs = make_inputs(case, dtype, seed=case.n_tokens)
    tokens, idx, _ = run_emulated(runner, tmp_path, inputs)
    assert_matches_reference(tokens, idx, inputs)
    assert_exact(tokens, tokens_in_apply_order(inputs))


def test_emulated_scalar_path_and_strided_inputs(runner, tmp_path):
    case = ZipCase(2, 70, 96, 4, 16, 9, 7, has_cls=False, attn_layout="rows", key_layout="avg")
    inputs = make_inputs(case, torch.bfloat16, seed=3)
    inputs = {
        **inputs,
        "hidden": misaligned(inputs["hidden"]),
        "attn": inputs["attn"].transpose(1, 2).contiguous().transpose(1, 2),
        "keys": inputs["keys"].transpose(1, 2).contiguous().transpose(1, 2),
    }
    tokens, idx, printed = run_emulated(runner, tmp_path, inputs)
    assert "apply: vec=1" in printed and "vectorised=0" in printed
    assert_matches_reference(tokens, idx, inputs)
    assert_exact(tokens, tokens_in_apply_order(inputs))


# Launch shapes far from the automatic ones: one assign block per 32 positions or all in one,
# metric tiles of 8 channels (several staging rounds) or all channels, one or three target chunks,
# one channel lane per merge block or many, few row lanes (several rounds of pieces), a small
# device (one wave, no opt-in) and the scalar merge path.
SPLITS = [
    dict(positions_per_block=32, tile_channels=8, target_chunk=4, channel_lanes=1, row_lanes=32),
    dict(positions_per_block=256, tile_channels=64, target_chunk=12, channel_lanes=4, row_lanes=8),
    dict(positions_per_block=64, tile_channels=24, target_chunk=8, channel_lanes=2, row_lanes=16),
    dict(device={"sm_count": 1, "shared_opt_in": 48 * 1024}),
    dict(vectorise=False),
]


@pytest.mark.parametrize(
    "case, dtype",
    [
        (ZipCase(1, 300, 64, 4, 16, 41, 12, key_layout="heads"), torch.bfloat16),
        (ZipCase(1, 257, 72, 2, 24, 30, 9, has_cls=False, attn_layout="full", key_layout="none"), torch.float32),
    ],
    ids=str,
)
def test_every_launch_shape_gives_the_same_bits(runner, tmp_path, case, dtype):
    inputs = make_inputs(case, dtype, seed=11)
    expected, expected_idx, _ = run_emulated(runner, tmp_path, inputs)
    assert_exact(expected, tokens_in_apply_order(inputs))
    for split in SPLITS:
        tokens, idx, printed = run_emulated(runner, tmp_path, inputs, **split)
        assert torch.equal(idx, expected_idx), (split, printed)
        assert_exact(tokens, expected)


def test_emulated_more_targets_than_threads(runner, tmp_path):
    """41 targets on a 32-thread merge block: every thread counts and places several targets."""
    inputs = make_inputs(ZipCase(1, 211, 16, 2, 8, 20, 41, key_layout="heads"), torch.bfloat16, seed=13)
    tokens, idx, printed = run_emulated(runner, tmp_path, inputs, channel_lanes=1, row_lanes=32)
    assert "channel_lanes=1 row_lanes=32" in printed
    assert_matches_reference(tokens, idx, inputs)
    assert_exact(tokens, tokens_in_apply_order(inputs))


def test_emulated_ties_and_non_finite_values(runner, tmp_path):
    """Scores and keys from a few levels, so that many scores and similarities tie exactly."""
    gen = torch.Generator().manual_seed(7)
    case = ZipCase(2, 150, 40, 4, 16, 30, 12, has_cls=False, attn_layout="scores")
    inputs = make_inputs(case, torch.float32)
    scores = torch.randint(0, 4, (2, 150), generator=gen).float() / 4
    scores[:, 60:90] = -scores[:, 60:90]  # -0.0 ties with +0.0
    scores[0, 0], scores[0, 5], scores[1, 7], scores[1, 9] = float("nan"), float("nan"), float("inf"), float("-inf")
    keys = torch.randint(-1, 2, (2, 150, 16), generator=gen).float()
    keys[:, ::7] = 0  # zero keys: unit key 0, similarity 0 to every target
    keys[1, 50] = float("inf")  # an infinite key: NaN similarities, ranked last
    inputs = {**inputs, "attn": scores, "keys": keys}
    tokens, idx, _ = run_emulated(runner, tmp_path, inputs, positions_per_block=32, tile_channels=8)
    assert_matches_reference(tokens, idx, inputs)
    assert_exact(tokens, tokens_in_apply_order(inputs))
