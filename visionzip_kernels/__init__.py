"""Fused kernels for VisionZip: keep a vision encoder's dominant tokens, merge the rest.

``zip_tokens`` is the op (``docs/CONTRACT.md``), ``available_backends`` lists where it runs;
``attention_importance`` gives it the penultimate layer's attention without the ``N x N`` map.
``zip_tokens_varlen`` and ``attention_importance_varlen`` are their forms for packed batches of
images of different sizes (Qwen-VL), with ``pool_merge_units`` for Qwen's 2x2 merge units.
``docs/ARCHITECTURE.md`` maps the package.
"""
from . import _extension  # noqa: F401  (loads the compiled op library first)
from ._version import __version__
from .ops.attention_importance import attention_importance
from .ops.attention_importance_varlen import attention_importance_varlen, pool_merge_units
from .ops.zip_tokens import available_backends, zip_tokens
from .ops.zip_tokens_varlen import zip_tokens_varlen

__all__ = [
    "__version__",
    "attention_importance",
    "attention_importance_varlen",
    "available_backends",
    "pool_merge_units",
    "zip_tokens",
    "zip_tokens_varlen",
]
