"""Fused kernels for VisionZip: keep a vision encoder's dominant tokens, merge the rest.

``zip_tokens`` is the op (``docs/CONTRACT.md``), ``available_backends`` lists what runs where;
``attention_importance`` gives it the penultimate layer's attention without the ``N x N`` map.
"""
from . import _native  # noqa: F401  (loads the compiled op library first)
from .importance import attention_importance
from .ops import available_backends, zip_tokens

__all__ = ["attention_importance", "available_backends", "zip_tokens"]
