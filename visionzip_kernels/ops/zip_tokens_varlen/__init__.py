"""``zip_tokens_varlen``: ``zip_tokens`` per image of a packed, variable-length batch, in raster order."""
from .op import available_backends, zip_tokens_varlen

__all__ = ["available_backends", "zip_tokens_varlen"]
