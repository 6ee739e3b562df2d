"""``apply_visionzip``: one call puts VisionZip into a LLaVA, LLaVA-NeXT, LLaVA-OneVision, CLIP or
SigLIP model.

Everything is checked before anything is changed, and a failure part-way undoes what was done, so
a call either applies VisionZip to the model and the processor or leaves both untouched.
"""
from __future__ import annotations

from transformers import (
    LlavaForConditionalGeneration,
    LlavaModel,
    LlavaNextForConditionalGeneration,
    LlavaNextModel,
    LlavaNextProcessor,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionModel,
    LlavaOnevisionProcessor,
    LlavaProcessor,
)

from .budget import make_budget
from .encoder import VISION_MODELS
from .handle import VisionZipHandle
from .llava import patch_llava
from .llava_next import patch_llava_next
from .llava_onevision import patch_llava_onevision
from .processor import (
    check_processor,
    patch_llava_next_processor,
    patch_llava_onevision_processor,
    patch_llava_processor,
)
from .vision_model import patch_vision_model

SUPPORTED_MODELS = (
    "LlavaForConditionalGeneration, LlavaModel, LlavaNextForConditionalGeneration, LlavaNextModel, "
    "LlavaOnevisionForConditionalGeneration, LlavaOnevisionModel, CLIPVisionModel, SiglipVisionModel"
)


def _multimodal_parts(model):
    """``(inner model, processor class, model patcher, processor patcher)`` for a LLaVA model.

    ``None`` for any other model.
    """
    if isinstance(model, (LlavaForConditionalGeneration, LlavaModel)):
        inner = model.model if isinstance(model, LlavaForConditionalGeneration) else model
        return inner, LlavaProcessor, patch_llava, patch_llava_processor
    if isinstance(model, (LlavaNextForConditionalGeneration, LlavaNextModel)):
        inner = model.model if isinstance(model, LlavaNextForConditionalGeneration) else model
        return inner, LlavaNextProcessor, patch_llava_next, patch_llava_next_processor
    if isinstance(model, (LlavaOnevisionForConditionalGeneration, LlavaOnevisionModel)):
        inner = model.model if isinstance(model, LlavaOnevisionForConditionalGeneration) else model
        return inner, LlavaOnevisionProcessor, patch_llava_onevision, patch_llava_onevision_processor
    return None


def apply_visionzip(
    model, processor=None, *, dominant: int = 54, contextual: int = 10, backend: str = "auto"
) -> VisionZipHandle:
    """Make ``model`` (and ``processor``) use VisionZip's ``dominant + contextual`` visual tokens.

    model: a ``LlavaForConditionalGeneration`` / ``LlavaModel``, a
        ``LlavaNextForConditionalGeneration`` / ``LlavaNextModel`` or a
        ``LlavaOnevisionForConditionalGeneration`` / ``LlavaOnevisionModel`` with a CLIP or SigLIP
        vision tower, or a bare ``CLIPVisionModel`` / ``SiglipVisionModel``. Changed in place, on
        this instance only.
    processor: the model's ``LlavaProcessor`` / ``LlavaNextProcessor`` /
        ``LlavaOnevisionProcessor``, patched to write the reduced number of image (and video)
        placeholders (``None`` to leave processing alone, e.g. when the placeholders are built by
        hand). Not accepted with a bare vision model, whose image processor needs no change.
    dominant: tokens kept per image (per crop for LLaVA-NeXT and LLaVA-OneVision, per video frame
        for LLaVA-OneVision) by attention, counting the CLS token where the encoder has one (CLIP);
        the paper's LLaVA-1.5 setting is 54.
    contextual: merged tokens per image (per crop, per frame); the paper's LLaVA-1.5 setting is 10.
    backend: the ``zip_tokens`` backend (``"auto"`` picks the fastest for the tensors' device).

    Returns a ``VisionZipHandle``; ``handle.remove()`` (or leaving ``with apply_visionzip(...):``)
    restores the model and the processor exactly.

    Raises ``TypeError`` for an unsupported model, vision tower or processor, ``ValueError`` for a
    budget the encoder cannot meet (``dominant < 1``, ``contextual < 0``, or more tokens than the
    encoder produces), a ``vision_feature_layer`` other than the penultimate layer (for
    LLaVA-OneVision: other than one encoder layer's output), or a model or processor VisionZip is
    already applied to.
    """
    parts = _multimodal_parts(model)
    if parts is None:
        if not isinstance(model, VISION_MODELS):
            raise TypeError(
                f"apply_visionzip: `model` must be one of {SUPPORTED_MODELS}, "
                f"got {type(model).__name__}"
            )
        if processor is not None:
            raise TypeError(
                "apply_visionzip: `processor` is only used with LLaVA models; the image "
                f"processor of a {type(model).__name__} needs no change, so pass processor=None"
            )
        budget = make_budget(model, dominant, contextual, backend)
        patches = patch_vision_model(model, budget)
        return VisionZipHandle(model, None, budget, patches)

    inner, processor_class, patch_model, patch_processor = parts
    if not isinstance(inner.vision_tower, VISION_MODELS):
        raise TypeError(
            "apply_visionzip: the vision tower of `model` must be a CLIPVisionModel or "
            f"SiglipVisionModel, got {type(inner.vision_tower).__name__}"
        )
    budget = make_budget(inner.vision_tower, dominant, contextual, backend)
    if processor is not None:
        check_processor(processor, processor_class, model, inner.config)
    patches = patch_model(inner, budget)
    if processor is not None:
        try:
            patches += patch_processor(processor, budget)
        except Exception:
            for patch in reversed(patches):
                patch.restore()
            raise
    return VisionZipHandle(model, processor, budget, patches)
