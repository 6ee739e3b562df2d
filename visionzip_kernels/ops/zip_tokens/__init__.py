"""``zip_tokens``: VisionZip's dominant and contextual tokens (``docs/CONTRACT.md``)."""
from .op import available_backends, zip_tokens

__all__ = ["available_backends", "zip_tokens"]
