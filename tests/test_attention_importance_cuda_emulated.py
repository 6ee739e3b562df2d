"""The kernels of the CUDA C++ backend of attention_importance, run on the CPU.

``tests/cuda_emulation/run_attention_importance.cpp`` compiles ``csrc/attention_importance_cuda.cuh``
with the host stand-ins of ``tests/cuda_emulation/device_primitives_host.h`` (every CUDA thread an
OS thread, barriers for __syncthreads and the warp exchanges, cp.async copies held back until their
wait, poisoned shared memory and outputs, the m16n8k16 fragments in PTX's documented layout) and
launches them with the launch plan of ``csrc/attention_importance_cuda.cu``. So the kernels'
indexing, masking, pipelining and reductions are checked here, on every path (CLS row, tensor-core
and CUDA-core passes, 16-byte and element-wise loads), against the same float64 truth and
tolerance as every backend. What only a GPU shows (the hardware's own fragment layout and
rounding, real concurrency) is left to ``test_attention_importance_cuda.py``. Shapes are small:
each emulated block runs its threads as OS threads.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from emulation_runners import compile_runner, run_runner, sanitizers
from importance_cases import ATOL, RTOL, exact_importance



@pytest.fixture(scope="module", params=sanitizers())
def runner(request, tmp_path_factory) -> Path:
    return compile_runner("run_attention_importance", tmp_path_factory.mktemp("emulation"), request.param)


def token_major(batch, heads, n_tokens, head_dim, dtype, gen):
    """[B, H, N, hd] views of [B, N, H, hd] projections, as the encoder hands them."""
    return torch.randn(batch, n_tokens, heads, head_dim, generator=gen).mul(1.4).to(dtype).transpose(1, 2)


def misaligned(batch, heads, n_tokens, head_dim, dtype, gen):
    """Contiguous [B, H, N, hd] starting one element into its storage: no 16-byte rows."""
    flat = torch.randn(batch * heads * n_tokens * head_dim + 1, generator=gen).mul(1.4).to(dtype)
    return flat[1:].view(batch, heads, n_tokens, head_dim)


def dim_strided(batch, heads, n_tokens, head_dim, dtype, gen):
    """[B, H, N, hd] views of [B, H, hd, N]: hd stride N."""
    return torch.randn(batch, heads, head_dim, n_tokens, generator=gen).mul(1.4).to(dtype).transpose(2, 3)


def write_storage(tensor: torch.Tensor, path: Path) -> None:
    torch.empty(0, dtype=torch.uint8).set_(tensor.untyped_storage()).numpy().tofile(path)


def run_emulated(runner: Path, workdir: Path, q, k, has_cls: bool, scale: float, lse=None):
    """The emulated kernels' importance [B, H, N] and the path line they printed."""
    write_storage(q, workdir / "q.bin")
    write_storage(k, workdir / "k.bin")
    lse_args = ["-", "0", "0", "0"]
    if lse is not None:
        write_storage(lse, workdir / "lse.bin")
        lse_args = [str(workdir / "lse.bin"), *map(str, lse.stride())]
    out_path = workdir / "out.bin"
    args = [
        str(runner), str(q.dtype).removeprefix("torch."), str(int(has_cls)), repr(scale), *map(str, q.shape),
        str(workdir / "q.bin"), str(q.storage_offset()), *map(str, q.stride()),
        str(workdir / "k.bin"), str(k.storage_offset()), *map(str, k.stride()),
        *lse_args, str(out_path),
    ]
    result = run_runner(args, workdir.name, timeout=600)
    out = torch.from_numpy(np.fromfile(out_path, dtype=np.float32)).view(*q.shape[:3])
    return out, result.stdout.strip()


# (dtype, B, H, N, hd, has_cls, with_lse, q layout, k layout, expected path line)
CASES = [
    (torch.bfloat16, 2, 1, 65, 64, True, False, token_major, token_major, "path=cls vectorised=1"),
    (torch.float16, 1, 2, 70, 72, True, True, misaligned, token_major, "path=cls vectorised=0"),
    (torch.float32, 1, 1, 577, 80, True, False, token_major, token_major, "path=cls vectorised=1"),
    (torch.bfloat16, 1, 1, 129, 24, False, False, token_major, token_major, "path=mma vectorised=1"),
    (torch.float16, 1, 1, 70, 72, False, True, token_major, misaligned, "path=mma vectorised=0"),
    (torch.bfloat16, 1, 1, 70, 128, False, True, token_major, token_major, "path=mma vectorised=1"),
    (torch.float32, 1, 1, 70, 40, False, False, token_major, dim_strided, "path=simt vectorised=0"),
    (torch.bfloat16, 1, 1, 33, 136, False, True, token_major, token_major, "path=simt vectorised=1"),
    # hd not a multiple of 8 (no 16-byte rows), and LLaVA-NeXT's N = 2880 on the CLS path.
    (torch.float16, 1, 1, 70, 20, False, False, token_major, token_major, "path=mma vectorised=0"),
    (torch.float32, 1, 2, 45, 13, False, True, token_major, token_major, "path=simt vectorised=0"),
    (torch.bfloat16, 1, 1, 2880, 64, True, False, token_major, token_major, "path=cls vectorised=1"),
]


@pytest.mark.parametrize(
    "dtype, batch, heads, n_tokens, head_dim, has_cls, with_lse, q_layout, k_layout, path", CASES,
    ids=[f"{c[9].split()[0][5:]}-{str(c[0])[6:]}-N{c[3]}-hd{c[4]}-{'lse' if c[6] else 'nolse'}-"
         f"{c[7].__name__}-{c[8].__name__}" for c in CASES],
)
def test_emulated_kernels_match_float64(
    runner, tmp_path, dtype, batch, heads, n_tokens, head_dim, has_cls, with_lse, q_layout, k_layout, path
):
    gen = torch.Generator().manual_seed(n_tokens * head_dim)
    q = q_layout(batch, heads, n_tokens, head_dim, dtype, gen)
    k = k_layout(batch, heads, n_tokens, head_dim, dtype, gen)
    scale = head_dim**-0.5
    lse = None
    if with_lse:
        lse = torch.logsumexp(q.double() @ k.double().transpose(-1, -2) * scale, dim=-1).float()
    out, printed = run_emulated(runner, tmp_path, q, k, has_cls, scale, lse)
    assert printed == path
    torch.testing.assert_close(out.double(), exact_importance(q, k, has_cls, scale), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("has_cls", (True, False), ids=("cls", "nocls"))
def test_emulated_nan_query_poisons_only_its_head(runner, tmp_path, has_cls):
    gen = torch.Generator().manual_seed(5)
    q, k = (token_major(1, 2, 70, 64, torch.bfloat16, gen) for _ in range(2))
    q[0, 0, 0 if has_cls else 3, 5] = float("nan")
    out, _ = run_emulated(runner, tmp_path, q, k, has_cls, 0.125)
    assert out[0, 0].isnan().all()
    torch.testing.assert_close(out[0, 1].double(), exact_importance(q, k, has_cls, 0.125)[0, 1], rtol=RTOL, atol=ATOL)
