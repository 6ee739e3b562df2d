"""Loads the compiled extensions: ``_C`` (every op schema and the C++ CPU kernels, required) and
``_C_cuda`` (the CUDA C++ kernels, optional)."""
from __future__ import annotations

import importlib
import warnings

import torch  # noqa: F401  (loads libtorch, which the extensions link against)

try:
    from . import _C  # noqa: F401  (registers the visionzip op schemas and the C++ CPU kernel)
except ModuleNotFoundError as error:
    raise ImportError(
        "visionzip_kernels._C is not built; install the package with "
        "`pip install --no-build-isolation -e .` from the repository root"
    ) from error


def _load_cuda_extension() -> bool:
    try:
        importlib.import_module("visionzip_kernels._C_cuda")
    except ModuleNotFoundError:
        return False
    except ImportError as error:
        warnings.warn(f"visionzip_kernels._C_cuda is built but does not load: {error}", stacklevel=2)
        return False
    return True


CUDA_EXTENSION_BUILT = _load_cuda_extension()
