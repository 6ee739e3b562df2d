"""Fused kernels for VisionZip: keep a vision encoder's dominant tokens, merge the rest.

``zip_tokens`` is the op (``docs/CONTRACT.md``), ``available_backends`` lists where it runs;
``attention_importance`` gives it the penultimate layer's attention without the ``N x N`` map.
``docs/ARCHITECTURE.md`` maps the package.
"""
from . import _extension  # noqa: F401  (loads the compiled op library first)
from ._version import __version__
from .ops.attention_importance import attention_importance
from .ops.zip_tokens import available_backends, zip_tokens

__all__ = ["__version__", "attention_importance", "available_backends", "zip_tokens"]
