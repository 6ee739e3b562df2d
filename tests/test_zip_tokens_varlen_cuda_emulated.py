"""The kernels of the CUDA C++ backend of zip_tokens_varlen, run on the CPU.

``tests/cuda_emulation/run_zip_tokens_varlen.cpp`` compiles ``csrc/zip_tokens_varlen_cuda.cuh`` with
the host stand-ins of ``tests/cuda_emulation/device_primitives_host.h`` (every CUDA thread an OS
thread, barriers for __syncthreads and the warp exchanges) and launches the plan and apply kernels
with the launches of ``csrc/zip_tokens_varlen_launch.h``, the code the extension launches them with.
Built with AddressSanitizer; inputs are read from buffers of exactly their storage's size;
workspaces and outputs start as poison (NaN, -7777777) between guard zones that must be intact
afterwards.

Checked here: kept indices and offsets exactly, and tokens within the parity tolerance, against the
reference (``varlen_cases.assert_zip_varlen_matches_reference``), on shapes reaching every path of
the kernels: segments of 4096 and 2880 tokens (several passes of the plan block), sizes that are
multiples of no tile, D not a multiple of 8 with a partial channel block, strided and offset views,
k_dom = the segment's size, more targets than an apply block's 32 slots and than the plan block's
512 threads, batches split over several launches; and a GPU cu_seqlens that disagrees with
``seqlens``: those segments are refused (kept index -1, rows NaN), the others are right, and nothing
is written outside the outputs. What only a GPU shows is in ``test_varlen_gpu.py``.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from emulation_runner import compile_runner, tensor_arg
from varlen_cases import assert_zip_varlen_matches_reference, make_packed


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Path:
    """The runner under AddressSanitizer: a read or write outside any buffer aborts it at once."""
    binary = tmp_path_factory.mktemp("emulation") / "run_zip_tokens_varlen"
    return compile_runner("run_zip_tokens_varlen.cpp", binary, flags=("-fsanitize=address",))


def counts(values) -> str:
    return ",".join(str(int(value)) for value in values) or ""


def run_emulated(runner: Path, workdir: Path, packed: dict, k_dom, k_ctx, device_cu_seqlens=None, segments_per_launch=0):
    """``(tokens, kept_idx, cu_kept, printed launches)`` of the emulated kernels on ``packed``; with
    ``device_cu_seqlens``, the kernels compare those offsets with ``seqlens`` as they do a GPU's;
    ``segments_per_launch`` splits the batch into smaller launches than the GPU's (0: as on the GPU)."""
    hidden, keys = packed["hidden"], packed["keys"]
    args = {
        "hidden": tensor_arg(hidden, workdir / "hidden.bin"),
        "importance": tensor_arg(packed["importance"], workdir / "importance.bin"),
        "keys": "-" if keys is None else tensor_arg(keys, workdir / "keys.bin"),
        "cu_seqlens": "-" if device_cu_seqlens is None else tensor_arg(device_cu_seqlens, workdir / "cu.bin"),
        "seqlens": counts(packed["seqlens"]), "k_dom": counts(k_dom), "k_ctx": counts(k_ctx),
        "segments_per_launch": segments_per_launch,
        "tokens": workdir / "tokens.bin", "kept_idx": workdir / "kept_idx.bin", "cu_kept": workdir / "cu_kept.bin",
    }
    command = [str(runner), *(f"{name}={value}" for name, value in args.items())]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    tokens = torch.from_numpy(np.fromfile(workdir / "tokens.bin", dtype=np.float32))
    kept_idx = torch.from_numpy(np.fromfile(workdir / "kept_idx.bin", dtype=np.int64))
    cu_kept = torch.from_numpy(np.fromfile(workdir / "cu_kept.bin", dtype=np.int64))
    tokens = tokens.view(-1, hidden.shape[1]).to(hidden.dtype)  # exact: the values are hidden's dtype
    return tokens, kept_idx, cu_kept, result.stdout


def strided(x: torch.Tensor, row_pad: int, transpose: bool = False) -> torch.Tensor:
    """The same values as a view with an offset and padded rows, channels transposed in memory."""
    rows, cols = x.shape if x.dim() == 2 else (x.shape[0], 1)
    if transpose:
        base = torch.empty(cols + row_pad, rows + 1, dtype=x.dtype)
        view = base[row_pad:, 1:].t()
    else:
        base = torch.empty(rows + 1, cols + row_pad, dtype=x.dtype)
        view = base[1:, row_pad:]
    view = view if x.dim() == 2 else view[:, 0]
    view.copy_(x)
    return view


# (segment sizes, D, Dk (0: hidden is the metric), dtype, k_dom, k_ctx per segment): every dtype and
# both metrics; 4096 and 2880 tokens (8 and 6 passes of 512), sizes of no tile, a 1-token and an
# empty segment; D = 200 (two channel blocks, the second partial; not a multiple of 8) and 37;
# k_dom = the size (no target), every remaining token a target, k_ctx = 0, 40 targets (two apply
# target blocks) and 700 (more than the plan block's 512 threads).
CASES = [
    ((4096, 1, 2880, 0, 77), 200, 24, torch.bfloat16, (2662, 0, 1872, 0, 50), (204, 1, 144, 0, 3)),
    ((2880, 513, 31), 37, 0, torch.float32, (1000, 513, 0), (700, 0, 31)),
    ((1000, 333, 96), 72, 40, torch.float16, (600, 0, 10), (40, 333, 86)),
]


@pytest.mark.parametrize("sizes, width, key_dim, dtype, k_dom, k_ctx", CASES, ids=lambda v: str(v)[:24])
def test_emulated_kernels_match_reference(runner, tmp_path, sizes, width, key_dim, dtype, k_dom, k_ctx):
    packed = make_packed(sizes, width, max(key_dim, 1), dtype, seed=sum(sizes), with_keys=key_dim > 0)
    tokens, kept_idx, cu_kept, _ = run_emulated(runner, tmp_path, packed, k_dom, k_ctx)
    assert_zip_varlen_matches_reference((tokens, kept_idx, cu_kept), packed, list(k_dom), list(k_ctx))


def test_emulated_strided_views_ties_and_non_finite(runner, tmp_path):
    """Offset views with padded rows (hidden), transposed channels (keys), a strided importance;
    importance ties across pass boundaries, NaN/inf ranked last; zero keys (similarity 0 to all)."""
    sizes = (700, 45)
    packed = make_packed(sizes, 19, 12, torch.float32, seed=5)
    importance = packed["importance"]
    importance[400:650] = 0.25  # ties spanning the second and first passes' boundary
    importance[[3, 500, 701]] = torch.tensor([float("nan"), float("inf"), float("-inf")])
    packed["keys"][::9] = 0
    packed = {
        **packed,
        "hidden": strided(packed["hidden"], 5),
        "keys": strided(packed["keys"], 3, transpose=True),
        "importance": strided(importance, 2),
    }
    assert packed["hidden"].stride(0) == 24 and packed["keys"].stride(1) != 1 and packed["importance"].stride(0) == 3
    k_dom, k_ctx = (300, 20), (50, 9)
    tokens, kept_idx, cu_kept, _ = run_emulated(runner, tmp_path, packed, k_dom, k_ctx)
    assert_zip_varlen_matches_reference((tokens, kept_idx, cu_kept), packed, list(k_dom), list(k_ctx))


def test_emulated_batch_split_over_launches(runner, tmp_path):
    """9 segments, 4 per launch (the GPU takes 96), cu_seqlens on the device: each launch's table
    starts at its first segment, for the offsets it compares and the cu_kept it writes."""
    sizes = [5 + (7 * i) % 23 for i in range(9)]
    packed = make_packed(sizes, 9, 4, torch.bfloat16, seed=8)
    k_dom = [size // 3 for size in sizes]
    k_ctx = [max(size // 5, 1) for size in sizes]
    tokens, kept_idx, cu_kept, printed = run_emulated(
        runner, tmp_path, packed, k_dom, k_ctx, device_cu_seqlens=packed["cu_seqlens"], segments_per_launch=4
    )
    assert printed.count("launch:") == 3
    assert_zip_varlen_matches_reference((tokens, kept_idx, cu_kept), packed, k_dom, k_ctx)


@pytest.mark.parametrize("cu_dtype", [torch.int32, torch.int64], ids=str)
def test_emulated_cu_seqlens_agreeing_on_the_device(runner, tmp_path, cu_dtype):
    packed = make_packed((90, 13, 64), 16, 8, torch.float16, seed=9)
    cu = strided(packed["cu_seqlens"].to(cu_dtype), 1)
    outputs = run_emulated(runner, tmp_path, packed, (40, 5, 0), (8, 2, 64), device_cu_seqlens=cu)[:3]
    assert_zip_varlen_matches_reference(outputs, packed, [40, 5, 0], [8, 2, 64])


def test_emulated_issue_case_is_refused_in_bounds(runner, tmp_path):
    """h[4, 8], cu_seqlens [0, 2] with seqlens [4], k_dom 1, k_ctx 3: the segment is refused."""
    packed = make_packed((4,), 8, 8, torch.float32, seed=1, with_keys=False)
    tokens, kept_idx, cu_kept, _ = run_emulated(
        runner, tmp_path, packed, (1,), (3,), device_cu_seqlens=torch.tensor([0, 2], dtype=torch.int64)
    )
    assert kept_idx.tolist() == [-1] * 4 and cu_kept.tolist() == [0, 4]
    assert tokens.isnan().all()


# Segments of 37, 1, 90 and 76 tokens: offsets [0, 37, 38, 128, 204].
@pytest.mark.parametrize(
    "cu_seqlens, refused",
    [
        ([0, 37, 37, 128, 204], [1, 2]),  # one wrong offset: the two segments it bounds
        ([0, 37, 38, 128, 9999], [3]),    # the end past T_total
        ([5, 37, 38, 128, 204], [0]),     # a start that is not 0
    ],
    ids=str,
)
def test_emulated_mismatched_cu_seqlens_refuses_those_segments(runner, tmp_path, cu_seqlens, refused):
    sizes = (37, 1, 90, 76)
    packed = make_packed(sizes, 20, 6, torch.bfloat16, seed=10)
    k_dom, k_ctx = [20, 0, 45, 30], [3, 1, 9, 46]
    tokens, kept_idx, cu_kept, _ = run_emulated(
        runner, tmp_path, packed, k_dom, k_ctx, device_cu_seqlens=torch.tensor(cu_seqlens, dtype=torch.int32)
    )
    expected = [0, *np.cumsum([d + c for d, c in zip(k_dom, k_ctx)]).tolist()]
    assert cu_kept.tolist() == expected
    for segment in range(len(sizes)):
        rows = slice(expected[segment], expected[segment + 1])
        if segment in refused:
            assert (kept_idx[rows] == -1).all() and tokens[rows].isnan().all(), segment
        else:
            start = sum(sizes[:segment])
            piece = slice(start, start + sizes[segment])
            alone = {
                **packed, "hidden": packed["hidden"][piece], "importance": packed["importance"][piece],
                "keys": packed["keys"][piece], "cu_seqlens": torch.tensor([0, sizes[segment]]), "seqlens": [sizes[segment]],
            }
            outputs = (tokens[rows], kept_idx[rows] - start, torch.tensor([0, rows.stop - rows.start]))
            assert_zip_varlen_matches_reference(outputs, alone, [k_dom[segment]], [k_ctx[segment]])
