"""Building and feeding the CPU emulation runners of ``tests/cuda_emulation/``: each compiles a CUDA
kernel header with the host stand-ins of ``device_primitives_host.h`` and takes its tensors as files."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
EMULATION = ROOT / "tests" / "cuda_emulation"


def compile_runner(source: str, binary: Path, flags: tuple[str, ...] = ()) -> Path:
    """``tests/cuda_emulation/<source>`` compiled to ``binary`` (``$CXX`` or ``c++``) with ``flags``
    added, float32 math unfused (``-ffp-contract=off``) as the kernels' explicit round-to-nearest
    intrinsics are."""
    command = [
        os.environ.get("CXX", "c++"), "-std=c++20", "-O1", "-pthread", "-fno-strict-aliasing", "-ffp-contract=off",
        "-Wall", "-Wno-unknown-pragmas", *flags, "-I", str(ROOT / "csrc"), "-I", str(EMULATION),
        str(EMULATION / source), "-o", str(binary),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    return binary


def tensor_arg(tensor: torch.Tensor, path: Path) -> str:
    """``tensor``'s storage written to ``path``, as the runners' FILE:DTYPE:OFFSET:SIZES:STRIDES."""
    torch.empty(0, dtype=torch.uint8).set_(tensor.untyped_storage()).numpy().tofile(path)
    dtype = str(tensor.dtype).removeprefix("torch.")
    sizes = ",".join(map(str, tensor.shape))
    strides = ",".join(map(str, tensor.stride()))
    return f"{path}:{dtype}:{tensor.storage_offset()}:{sizes}:{strides}"
