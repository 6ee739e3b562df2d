"""The VisionZip token budget, checked against the vision encoder it will be applied to.

``dominant`` counts the CLS token where the encoder has one (CLIP), as in the paper: the LLaVA-1.5
default ``dominant=54, contextual=10`` keeps the CLS token, 53 patch tokens and 10 merged tokens,
64 in all. SigLIP has no CLS token, so its ``dominant`` tokens are all patch tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..checks import check_int
from ..ops.zip_tokens.op import BACKENDS
from .encoder import has_cls_token, vision_transformer


@dataclass(frozen=True)
class Budget:
    """How many tokens VisionZip keeps per image (per crop for LLaVA-NeXT), and which op backend.

    dominant: tokens kept by attention, counting the CLS token where there is one (>= 1).
    contextual: merged tokens (>= 0).
    backend: the ``zip_tokens`` backend (one of ``ops/zip_tokens/op.py``'s ``BACKENDS.names``).
    """

    dominant: int
    contextual: int
    backend: str = "auto"

    @property
    def tokens(self) -> int:
        """Tokens per image (per crop): ``dominant + contextual``."""
        return self.dominant + self.contextual


def encoder_tokens(tower) -> int:
    """Tokens the vision encoder produces per image: its patches, plus 1 for a CLS token."""
    config = vision_transformer(tower).config
    patches = (config.image_size // config.patch_size) ** 2
    return patches + int(has_cls_token(tower))


def make_budget(tower, dominant, contextual, backend: str) -> Budget:
    """A ``Budget`` for ``tower`` (a CLIP or SigLIP vision model), or a clear error.

    Raises ``TypeError`` for a non-int count, ``ValueError`` for ``dominant < 1``,
    ``contextual < 0``, ``dominant + contextual`` above the encoder's token count, an unknown
    ``backend``, or one that cannot run on the device ``tower``'s weights are on.
    """
    dominant = check_int(dominant, "dominant", "apply_visionzip")
    contextual = check_int(contextual, "contextual", "apply_visionzip")
    if dominant < 1:
        counted = " (it counts the CLS token)" if has_cls_token(tower) else ""
        raise ValueError(f"apply_visionzip: `dominant` must be >= 1{counted}, got {dominant}")
    if contextual < 0:
        raise ValueError(f"apply_visionzip: `contextual` must be >= 0, got {contextual}")
    available = encoder_tokens(tower)
    if dominant + contextual > available:
        raise ValueError(
            f"apply_visionzip: `dominant` + `contextual` = {dominant} + {contextual} = "
            f"{dominant + contextual} is more than the {available} tokens the vision encoder "
            f"({type(vision_transformer(tower)).__name__}) produces per image"
        )
    if backend not in BACKENDS.names:
        raise ValueError(f"apply_visionzip: `backend` must be one of {BACKENDS.names}, got {backend!r}")
    device = next(vision_transformer(tower).parameters()).device
    if backend != "auto" and backend not in BACKENDS.available(device):
        raise ValueError(
            f"apply_visionzip: backend={backend!r} cannot run on the model's device ({device}); "
            f"there it can be one of {BACKENDS.available(device)} or 'auto'. Move the model first "
            "(model.to(...)), then call apply_visionzip"
        )
    return Budget(dominant, contextual, backend)
