"""Build visionzip_kernels: the C++ CPU extension always, the CUDA extension when it can be made.

The CUDA extension is built when torch is a CUDA build and nvcc is found (a GPU need not be
visible). VISIONZIP_BUILD_CUDA=1 forces it (and fails loudly if it cannot be built),
VISIONZIP_BUILD_CUDA=0 skips it. Install with `pip install --no-build-isolation -e .` into an
environment that already has torch, so that pip never resolves torch itself.
"""
import glob
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

import torch

CUDA_ARCHS = "8.0;8.6;8.9;9.0"  # A100/A800, RTX 3090, RTX 4090, H100/H200
CXX_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off"]  # OpenMP for at::parallel_for; no FMA contraction


def build_cuda() -> bool:
    choice = os.environ.get("VISIONZIP_BUILD_CUDA", "auto")
    possible = torch.version.cuda is not None and CUDA_HOME is not None
    if choice == "0":
        return False
    if choice == "1" and not possible:
        raise RuntimeError(
            "VISIONZIP_BUILD_CUDA=1 but the CUDA extension cannot be built: "
            f"torch.version.cuda={torch.version.cuda!r}, CUDA_HOME={CUDA_HOME!r}"
        )
    return possible


extensions = [
    CppExtension(
        "visionzip_kernels._C",
        sorted(glob.glob("csrc/*.cpp")),
        depends=sorted(glob.glob("csrc/*.h")),
        extra_compile_args={"cxx": CXX_FLAGS},
        extra_link_args=["-fopenmp"],
    )
]
if build_cuda():
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", CUDA_ARCHS)
    extensions.append(
        CUDAExtension(
            "visionzip_kernels._C_cuda",
            sorted(glob.glob("csrc/*.cu")),
            depends=sorted(glob.glob("csrc/*.cuh")),
            extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--fmad=false"]},
        )
    )

setup(
    name="visionzip_kernels",
    version="0.1.0",
    description="Fused kernels for VisionZip visual-token reduction",
    packages=find_packages(include=["visionzip_kernels", "visionzip_kernels.*"]),
    ext_modules=extensions,
    cmdclass={"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)},
    python_requires=">=3.10",
    install_requires=["numpy"],
    extras_require={
        "test": ["pytest", "transformers>=5.23", "pillow"],
        "triton": ["triton"],
        "transformers": ["transformers>=5.23", "pillow"],
    },
)
