"""The VisionZip token budget, checked against the vision encoder it will be applied to.

``dominant`` counts the CLS token where the encoder has one (CLIP), as in the paper: the LLaVA-1.5
default ``dominant=54, contextual=10`` keeps the CLS token, 53 patch tokens and 10 merged tokens,
64 in all. SigLIP has no CLS token, so its ``dominant`` tokens are all patch tokens.

Qwen-VL images differ in size, so their budget may also be a fraction of each image's merged
tokens (``make_fraction_budget``): ``dominant=0.65, contextual=0.05`` keeps ``int(0.65 T)`` and
``max(int(0.05 T), 1)`` of an image's ``T`` tokens, the published rounding (``Budget.counts``).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

from ..backends import OpBackends
from ..checks import check_int
from ..ops.zip_tokens.op import BACKENDS
from ..ops.zip_tokens_varlen.op import BACKENDS as VARLEN_BACKENDS
from ..varlen import segment_budgets
from .encoder import has_cls_token, vision_transformer


@dataclass(frozen=True)
class Budget:
    """How many tokens VisionZip keeps per image (per crop for LLaVA-NeXT), and which op backend.

    dominant: tokens kept by attention, counting the CLS token where there is one (>= 1); for
        Qwen-VL also a float, the fraction of each image's tokens.
    contextual: merged tokens (>= 0); for Qwen-VL also a float fraction.
    backend: the ``zip_tokens`` backend (one of ``ops/zip_tokens/op.py``'s ``BACKENDS.names``),
        ``zip_tokens_varlen``'s for Qwen-VL.
    """

    dominant: int | float
    contextual: int | float
    backend: str = "auto"

    @property
    def tokens(self) -> int:
        """Tokens per image (per crop) of an integer budget: ``dominant + contextual``."""
        return self.dominant + self.contextual

    def counts(self, size: int) -> tuple[int, int]:
        """``(dominant, contextual)`` tokens kept of an image of ``size`` tokens, as
        ``zip_tokens_varlen`` rounds them; ``ValueError`` if they are more than ``size``."""
        k_dom = segment_budgets(self.dominant, "dominant", [size], False, "apply_visionzip")[0]
        k_ctx = segment_budgets(self.contextual, "contextual", [size], True, "apply_visionzip")[0]
        if k_dom + k_ctx > size:
            raise ValueError(
                f"VisionZip: an image of {size} tokens cannot keep {k_dom} dominant + {k_ctx} "
                f"contextual tokens; give `dominant`/`contextual` as fractions, or smaller counts"
            )
        return k_dom, k_ctx

    def tokens_for(self, size: int) -> int:
        """Tokens kept of an image of ``size`` tokens: the sum of ``counts(size)``."""
        return sum(self.counts(size))


def encoder_tokens(tower) -> int:
    """Tokens the vision encoder produces per image: its patches, plus 1 for a CLS token."""
    config = vision_transformer(tower).config
    patches = (config.image_size // config.patch_size) ** 2
    return patches + int(has_cls_token(tower))


def check_count(value, name: str, tower) -> int:
    """``value`` (``dominant`` or ``contextual``) as a token count for ``tower``'s fixed-size
    images. A fraction is refused with the count it stands for: fractions of an image's tokens are
    the unit of the Qwen-VL families, whose images differ in size."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        tokens = encoder_tokens(tower)
        raise TypeError(
            f"apply_visionzip: `{name}` must be an int, a count of tokens per image, for a "
            f"{type(vision_transformer(tower)).__name__} tower, got {value!r}; fractions of an image's "
            f"tokens are the Qwen2.5-VL and Qwen3-VL unit. This encoder produces {tokens} tokens per "
            f"image: {name}={value!r} of them is {name}={int(float(value) * tokens)}"
        )
    return check_int(value, name, "apply_visionzip")


def make_budget(tower, dominant, contextual, backend: str) -> Budget:
    """A ``Budget`` for ``tower`` (a CLIP or SigLIP vision model), or a clear error.

    Raises ``TypeError`` for a non-int count (a fraction, the Qwen-VL unit, among them),
    ``ValueError`` for ``dominant < 1``, ``contextual < 0``, ``dominant + contextual`` above the
    encoder's token count, an unknown ``backend``, or one that cannot run on the device ``tower``'s
    weights are on.
    """
    encoder = vision_transformer(tower)
    return count_budget(
        check_count(dominant, "dominant", tower),
        check_count(contextual, "contextual", tower),
        encoder_tokens(tower),
        f"the vision encoder ({type(encoder).__name__}) produces per image",
        backend,
        next(encoder.parameters()).device,
        counts_cls=has_cls_token(tower),
    )


def count_budget(
    dominant, contextual, available: int, source: str, backend: str, device, counts_cls: bool = False
) -> Budget:
    """A ``Budget`` of ``dominant + contextual`` tokens out of ``available`` per image, or a clear error.

    source: what gives the ``available`` tokens, ending the error message ("... is more than the
    256 tokens <source>"); counts_cls: ``dominant`` counts a CLS token (said in its error).
    ``backend``: a ``zip_tokens`` backend that runs on ``device``. Raises ``TypeError`` for a
    non-int count, ``ValueError`` for ``dominant < 1``, ``contextual < 0``, ``dominant +
    contextual > available`` or a backend that cannot run there.
    """
    dominant, contextual = check_counts(dominant, contextual, available, counts_cls, source, "apply_visionzip")
    check_backend(BACKENDS, backend, device)
    return Budget(dominant, contextual, backend)


def check_counts(
    dominant, contextual, available: int, has_cls: bool, source: str, caller: str
) -> tuple[int, int]:
    """``(dominant, contextual)`` as ints, or a clear error naming ``caller``.

    available: the tokens per image, counting a CLS token where ``has_cls``; source: what gives
    them, ending the error message ("... is more than the 577 tokens <source>"). Raises ``TypeError`` for a non-int count, ``ValueError`` for
    ``dominant < 1``, ``contextual < 0`` or ``dominant + contextual > available``.
    """
    dominant = check_int(dominant, "dominant", caller)
    contextual = check_int(contextual, "contextual", caller)
    if dominant < 1:
        counted = " (it counts the CLS token)" if has_cls else ""
        raise ValueError(f"{caller}: `dominant` must be >= 1{counted}, got {dominant}")
    if contextual < 0:
        raise ValueError(f"{caller}: `contextual` must be >= 0, got {contextual}")
    if dominant + contextual > available:
        raise ValueError(
            f"{caller}: `dominant` + `contextual` = {dominant} + {contextual} = "
            f"{dominant + contextual} is more than the {available} tokens {source}"
        )
    return dominant, contextual


def check_backend(backends: OpBackends, backend: str, device, caller: str = "apply_visionzip") -> None:
    """Raise ``ValueError`` unless ``backend`` is ``"auto"`` or one of ``backends`` that runs on
    ``device`` (where the model's weights are)."""
    if backend not in backends.names:
        raise ValueError(f"{caller}: `backend` must be one of {backends.names}, got {backend!r}")
    if backend != "auto" and backend not in backends.available(device):
        raise ValueError(
            f"{caller}: backend={backend!r} cannot run on the model's device ({device}); "
            f"there it can be one of {backends.available(device)} or 'auto'. Move the model first "
            "(model.to(...)), then call apply_visionzip"
        )


def check_largest_image(budget: Budget, largest: int, why: str) -> None:
    """Raise ``ValueError`` when ``budget`` cannot be kept of the largest image the processor makes,
    ``largest`` tokens (``why`` says where that bound comes from): no image could be zipped."""
    try:
        budget.counts(largest)
    except ValueError:
        raise ValueError(
            f"apply_visionzip: `dominant` + `contextual` = {budget.dominant} + {budget.contextual} "
            f"is more than the largest image `processor` makes can keep ({largest} tokens: {why}); "
            "give fractions of each image's tokens (the default is dominant=0.65, contextual=0.05) "
            "or smaller counts"
        ) from None


def make_fraction_budget(dominant, contextual, backend: str, device) -> Budget:
    """A ``Budget`` per image of any size (Qwen-VL), or a clear error.

    dominant, contextual: each an int (tokens per image, >= 0) or a float in ``[0, 1]`` (fraction
    of each image's tokens); ``dominant + contextual`` must keep at least one token. ``backend``:
    a ``zip_tokens_varlen`` backend that runs on ``device``. Raises ``TypeError`` for another type,
    ``ValueError`` for a value out of range. Whether an integer budget fits an image is checked per
    image, when it is processed (``Budget.counts``).
    """
    segment_budgets(dominant, "dominant", [], False, "apply_visionzip")
    segment_budgets(contextual, "contextual", [], True, "apply_visionzip")
    if dominant == 0 and contextual == 0 and not isinstance(contextual, float):
        raise ValueError("apply_visionzip: `dominant` + `contextual` must keep at least one token, got 0 + 0")
    check_backend(VARLEN_BACKENDS, backend, device)
    return Budget(dominant, contextual, backend)
