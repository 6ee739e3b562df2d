"""Fused kernels for VisionZip: keep a vision encoder's dominant tokens, merge the rest.

``zip_tokens`` is the op (``docs/CONTRACT.md``), ``available_backends`` lists what runs where.
"""
from . import _native  # noqa: F401  (loads the compiled op library first)
from .ops import available_backends, zip_tokens

__all__ = ["available_backends", "zip_tokens"]
