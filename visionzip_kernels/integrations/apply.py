"""``apply_visionzip``: one call puts VisionZip into a LLaVA, LLaVA-NeXT, LLaVA-OneVision,
Qwen2.5-VL, Qwen3-VL, Qwen3.5, InternVL, Gemma 3, Gemma 4, CLIP or SigLIP model.

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
from .gemma3 import MODEL_CLASSES as GEMMA3_MODELS, apply_gemma3
from .gemma4 import MODEL_CLASSES as GEMMA4_MODELS, apply_gemma4
from .graphs import checked_graph_cache_size
from .handle import VisionZipHandle
from .internvl_model import MODEL_CLASSES as INTERNVL_CLASSES, apply_internvl
from .llava import patch_llava
from .llava_next import patch_llava_next
from .llava_onevision import patch_llava_onevision
from .processor import (
    check_processor,
    patch_llava_next_processor,
    patch_llava_onevision_processor,
    patch_llava_processor,
    patch_placeholder_check,
)
from .qwen2_5_vl import QWEN2_5_VL
from .qwen3_5 import QWEN3_5, QWEN3_5_MOE
from .qwen3_vl import QWEN3_VL
from .qwen_vl_model import apply_qwen_vl
from .vision_model import patch_vision_model

SUPPORTED_MODELS = (
    "LlavaForConditionalGeneration, LlavaModel, LlavaNextForConditionalGeneration, LlavaNextModel, "
    "LlavaOnevisionForConditionalGeneration, LlavaOnevisionModel, "
    "Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLModel, Qwen3VLForConditionalGeneration, "
    "Qwen3VLModel, Qwen3_5ForConditionalGeneration, Qwen3_5Model, "
    "Qwen3_5MoeForConditionalGeneration, Qwen3_5MoeModel, InternVLForConditionalGeneration, "
    "InternVLModel, Gemma3ForConditionalGeneration, Gemma3Model, Gemma4ForConditionalGeneration, "
    "Gemma4Model, CLIPVisionModel, SiglipVisionModel"
)
QWEN_FAMILIES = (QWEN2_5_VL, QWEN3_VL, QWEN3_5, QWEN3_5_MOE)
GEMMA_FAMILIES = ((GEMMA3_MODELS, apply_gemma3), (GEMMA4_MODELS, apply_gemma4))  # (model classes, apply function)


def _multimodal_parts(model):
    """``(inner model, processor class, model patcher, processor patcher)`` for a LLaVA model.

    The model patcher is called as ``patch(inner, budget, graph_cache_size)``. ``None`` for any
    other model.
    """
    if isinstance(model, (LlavaForConditionalGeneration, LlavaModel)):
        inner = model.model if isinstance(model, LlavaForConditionalGeneration) else model
        return inner, LlavaProcessor, patch_llava, patch_llava_processor
    if isinstance(model, (LlavaNextForConditionalGeneration, LlavaNextModel)):
        inner = model.model if isinstance(model, LlavaNextForConditionalGeneration) else model
        return inner, LlavaNextProcessor, patch_llava_next, patch_llava_next_processor
    if isinstance(model, (LlavaOnevisionForConditionalGeneration, LlavaOnevisionModel)):
        inner = model.model if isinstance(model, LlavaOnevisionForConditionalGeneration) else model
        return inner, LlavaOnevisionProcessor, _patch_llava_onevision, patch_llava_onevision_processor
    return None


def _refuse_graphs(graph_cache: int | None, model, why: str) -> None:
    """``cuda_graphs=True`` captures LLaVA's and LLaVA-NeXT's vision path only: refuse it elsewhere."""
    if graph_cache is not None:
        raise ValueError(
            "apply_visionzip: `cuda_graphs=True` captures the vision path of LLaVA and LLaVA-NeXT "
            f"models only, not of a {type(model).__name__} ({why}); leave it False"
        )


def _patch_llava_onevision(inner, budget, graph_cache: int | None) -> list:
    _refuse_graphs(graph_cache, inner, "its images and video frames vary in number per call")
    return patch_llava_onevision(inner, budget)


def apply_visionzip(
    model,
    processor=None,
    *,
    dominant=None,
    contextual=None,
    backend: str = "auto",
    cuda_graphs: bool = False,
    graph_cache_size: int = 8,
) -> VisionZipHandle:
    """Make ``model`` (and ``processor``) use VisionZip's ``dominant + contextual`` visual tokens.

    model: a ``LlavaForConditionalGeneration`` / ``LlavaModel``, a
        ``LlavaNextForConditionalGeneration`` / ``LlavaNextModel`` or a
        ``LlavaOnevisionForConditionalGeneration`` / ``LlavaOnevisionModel`` with a CLIP or SigLIP
        vision tower, or a bare ``CLIPVisionModel`` / ``SiglipVisionModel``. Changed in place, on
        this instance only. For Qwen-VL: a ``Qwen2_5_VLForConditionalGeneration`` /
        ``Qwen2_5_VLModel``, a ``Qwen3VLForConditionalGeneration`` / ``Qwen3VLModel`` or a Qwen3.5
        ``Qwen3_5ForConditionalGeneration`` / ``Qwen3_5Model`` (MoE: ``Qwen3_5Moe...``) with its
        ``Qwen2_5_VLProcessor`` / ``Qwen3VLProcessor`` (``qwen_vl_model.py``). For InternVL: an
        ``InternVLForConditionalGeneration`` / ``InternVLModel`` with its ``InternVLProcessor``,
        every tile zipped on its own (``internvl_model.py``). For Gemma: a
        ``Gemma3ForConditionalGeneration`` / ``Gemma3Model`` (``gemma3.py``) or a
        ``Gemma4ForConditionalGeneration`` / ``Gemma4Model`` (``gemma4.py``) with its processor.
    processor: the model's ``LlavaProcessor`` / ``LlavaNextProcessor`` /
        ``LlavaOnevisionProcessor`` (or Qwen-VL processor), patched to write the reduced number of
        image (and video) placeholders (``None`` to leave processing alone, e.g. when the
        placeholders are built by hand). Not accepted with a bare vision model, whose image
        processor needs no change.
    dominant: tokens kept per image (per crop for LLaVA-NeXT and LLaVA-OneVision, per video frame
        for LLaVA-OneVision) by attention, counting the CLS token where the encoder has one (CLIP);
        default 54, the paper's LLaVA-1.5 setting. For Qwen-VL an int (tokens per image) or a float
        (fraction of each image's merged tokens, ``int(f T)``); default 0.65, the published
        Qwen2.5-VL setting. For InternVL the same, per tile of ``T`` (256) tokens: default 0.65,
        166 tokens. Gemma 3: soft tokens per image (and crop), default 108; Gemma 4: as for
        Qwen-VL, default 0.42.
    contextual: merged tokens per image (per crop, per frame); default 10 (LLaVA-1.5). For Qwen-VL
        an int or a float fraction (``max(int(f T), 1)``); default 0.05. For InternVL per tile:
        default 0.05, 12 tokens. Gemma 3: default 20; Gemma 4: default 0.08.
    backend: the ``zip_tokens`` backend (``"auto"`` picks the fastest for the tensors' device);
        ``zip_tokens_varlen``'s for Qwen-VL and Gemma 4.
    cuda_graphs: LLaVA and LLaVA-NeXT only: run the vision path (pixels to projected features) as
        CUDA graph replays, one graph captured per input signature (``graphs.py``); calls no graph
        can serve run eagerly, with one warning saying why.
    graph_cache_size: how many graphs ``cuda_graphs`` keeps (least recently used out first).

    Returns a ``VisionZipHandle``; ``handle.remove()`` (or leaving ``with apply_visionzip(...):``)
    restores the model and the processor exactly.

    Raises ``TypeError`` for an unsupported model, vision tower or processor, or a fraction as a
    LLaVA, CLIP or SigLIP budget; ``ValueError`` for a budget the encoder cannot meet
    (``dominant < 1``, ``contextual < 0``, more tokens than the encoder produces, or than the
    largest image a Qwen-VL processor makes), a ``vision_feature_layer`` other than the penultimate layer (for
    LLaVA-OneVision: other than one encoder layer's output), a ``graph_cache_size`` below 1,
    ``cuda_graphs`` with a model other than LLaVA / LLaVA-NeXT, or a model or processor VisionZip
    is already applied to.
    """
    graph_cache = checked_graph_cache_size(cuda_graphs, graph_cache_size)  # None: no CUDA graphs
    for model_classes, apply_family in GEMMA_FAMILIES:
        if isinstance(model, model_classes):
            _refuse_graphs(graph_cache, model, "its vision path is the model's own method, hooked")
            return apply_family(model, processor, dominant, contextual, backend)
    family = next((f for f in QWEN_FAMILIES if isinstance(model, f.model_classes)), None)
    if family is not None:
        _refuse_graphs(graph_cache, model, "its images vary in size, so every call is a new shape")
        dominant = 0.65 if dominant is None else dominant
        contextual = 0.05 if contextual is None else contextual
        return apply_qwen_vl(model, processor, family, dominant, contextual, backend)
    if isinstance(model, INTERNVL_CLASSES):
        _refuse_graphs(graph_cache, model, "its images vary in tiles, so every call is a new shape")
        dominant = 0.65 if dominant is None else dominant
        contextual = 0.05 if contextual is None else contextual
        return apply_internvl(model, processor, dominant, contextual, backend)
    dominant = 54 if dominant is None else dominant
    contextual = 10 if contextual is None else contextual
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
        _refuse_graphs(graph_cache, model, "a bare vision model has no projector to capture")
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
    patches = patch_model(inner, budget, graph_cache)
    try:
        patches += patch_placeholder_check(inner, budget)
        if processor is not None:
            patches += patch_processor(processor, budget)
    except Exception:
        for patch in reversed(patches):
            patch.restore()
        raise
    return VisionZipHandle(model, processor, budget, patches)
