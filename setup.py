"""Build visionzip_kernels: the C++ CPU extension always, the CUDA extension when it can be made.

The metadata lives in pyproject.toml; this file adds what depends on the installed torch: the
extensions and the torch requirement. The extensions compile against the torch that is already
installed, so every build runs without build isolation:

    pip install --no-build-isolation .        (or -e . for development)
    python -m build --wheel --no-isolation

The CUDA extension is built when torch is a CUDA build and nvcc is found (a GPU need not be
visible). VISIONZIP_BUILD_CUDA=1 forces it (and fails loudly if it cannot be built),
VISIONZIP_BUILD_CUDA=0 skips it, VISIONZIP_BUILD_CUDA=auto (or unset) decides as above; any other
value stops the build with a message. The architectures are those of csrc/cuda_archs.txt.
"""
import copy
import glob
import os
import sys

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as error:
    sys.exit(
        f"visionzip_kernels compiles against the installed torch, which this build cannot import "
        f"({error}). Install torch first, then build without isolation: "
        "`pip install --no-build-isolation .` (or `-e .`), or `python -m build --wheel --no-isolation`."
    )

CXX_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off"]  # OpenMP for at::parallel_for; no FMA contraction
LINK_FLAGS = ["-s"]  # no symbol tables or debug information in the installed modules


def cuda_archs() -> list[str]:
    """csrc/cuda_archs.txt as compute capabilities with a dot ("8.0", ...), TORCH_CUDA_ARCH_LIST's form."""
    with open(os.path.join("csrc", "cuda_archs.txt")) as lines:
        archs = [line.split("#")[0].strip() for line in lines]
    return [f"{arch[:-1]}.{arch[-1]}" for arch in archs if arch]


BUILD_CUDA_CHOICES = ("auto", "0", "1")  # VISIONZIP_BUILD_CUDA: decide, skip, insist


def build_cuda() -> bool:
    """Whether to build the CUDA extension, by VISIONZIP_BUILD_CUDA (unset: "auto")."""
    choice = os.environ.get("VISIONZIP_BUILD_CUDA", "auto")
    if choice not in BUILD_CUDA_CHOICES:
        sys.exit(
            f"VISIONZIP_BUILD_CUDA={choice!r}: it must be 1 (build the CUDA extension or fail), "
            "0 (skip it) or auto (build it when torch is a CUDA build and nvcc is found), or unset (auto)"
        )
    possible = torch.version.cuda is not None and CUDA_HOME is not None
    if choice == "0":
        return False
    if choice == "1" and not possible:
        raise RuntimeError(
            "VISIONZIP_BUILD_CUDA=1 but the CUDA extension cannot be built: "
            f"torch.version.cuda={torch.version.cuda!r}, CUDA_HOME={CUDA_HOME!r}"
        )
    return possible


def torch_requirement() -> str:
    """The torch release series this build compiles against: the extensions use libtorch's C++ ABI,
    which holds within a minor release only."""
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return f"torch=={major}.{minor}.*"


class BuildExtensionApart(BuildExtension.with_options(no_python_abi_suffix=True)):
    """torch's BuildExtension with one build folder per extension: each folder holds that
    extension's objects and its own build.ninja, so `build_ext -j N` builds them side by side."""

    def build_extension(self, ext):
        apart = copy.copy(self)  # a shallow copy per extension: the parallel builds share no build_temp
        apart.build_temp = os.path.join(self.build_temp, ext.name)
        super(BuildExtensionApart, apart).build_extension(ext)


extensions = [
    CppExtension(
        "visionzip_kernels._C",
        sorted(glob.glob("csrc/*.cpp")),
        depends=sorted(glob.glob("csrc/*.h")),
        extra_compile_args={"cxx": CXX_FLAGS},
        extra_link_args=["-fopenmp", *LINK_FLAGS],
    )
]
if build_cuda():
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", ";".join(cuda_archs()))
    extensions.append(
        CUDAExtension(
            "visionzip_kernels._C_cuda",
            sorted(glob.glob("csrc/*.cu")),
            depends=sorted(glob.glob("csrc/*.cuh") + glob.glob("csrc/*.h")),
            extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--fmad=false"]},
            extra_link_args=LINK_FLAGS,
        )
    )

setup(
    # Build outputs under .build/, not build/: a build/ folder at the root would shadow the `build`
    # package, so that `python -m build` there would fail.
    options={"build": {"build_base": os.path.join(".build", "setuptools")}},
    ext_modules=extensions,
    cmdclass={"build_ext": BuildExtensionApart},
    install_requires=[torch_requirement(), "numpy"],
)
