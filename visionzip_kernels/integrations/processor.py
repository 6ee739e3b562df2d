"""VisionZip in ``LlavaProcessor`` and ``LlavaNextProcessor``: fewer placeholders per image.

A LLaVA processor expands every ``<image>`` in the text to as many image tokens as the model has
features for that image. With VisionZip that count comes from ``llava_next.py``, and the processor is
patched on its instance at the narrowest point that decides it:

- ``LlavaProcessor``: ``replace_image_token`` (the placeholder string for one image, used by
  ``__call__``) and ``_get_num_multimodal_tokens`` (the same count, for serving engines) return
  ``dominant + contextual`` per image.
- ``LlavaNextProcessor``: ``_get_number_of_features``, which both of those call, returns the
  ``llava_next_image_tokens`` count for the image's crop grid. Its callers subtract one token when the
  processor's ``vision_feature_select_strategy`` is ``"default"`` (LLaVA drops the CLS token);
  VisionZip keeps the CLS token, so that one token is added back here.
"""
from __future__ import annotations

import functools

from transformers.processing_utils import MultiModalData

from .budget import Budget
from .handle import InstancePatch, bind_methods
from .llava_next import crop_grid, llava_next_image_tokens


def replace_image_token(
    processor, image_inputs: dict, image_idx: int, *, budget: Budget, **kwargs
) -> str:
    """The placeholder string of one LLaVA-1.5 image: ``dominant + contextual`` image tokens."""
    return processor.image_token * budget.tokens


def get_num_multimodal_tokens(
    processor, image_sizes=None, *, budget: Budget, **kwargs
) -> MultiModalData:
    """Image tokens and patches per image for LLaVA-1.5, given their ``(height, width)`` sizes."""
    if image_sizes is None:
        return MultiModalData()
    count = len(image_sizes)
    return MultiModalData(num_image_tokens=[budget.tokens] * count, num_image_patches=[1] * count)


def get_number_of_features(
    processor, orig_height: int, orig_width: int, height: int, width: int, *, budget: Budget
) -> int:
    """Image tokens of an ``orig_height x orig_width`` LLaVA-NeXT image, ``height x width`` crops.

    The ``llava_next_image_tokens`` count, plus one where the caller will subtract the CLS token.
    """
    pinpoints = processor.image_processor.image_grid_pinpoints
    rows, cols = crop_grid((orig_height, orig_width), pinpoints, height, width)
    cls_compensation = int(processor.vision_feature_select_strategy == "default")
    return llava_next_image_tokens(budget.tokens, rows, cols) + cls_compensation


def check_processor(processor, expected: type, model, model_config) -> None:
    """Raise unless ``processor`` is an ``expected`` whose image token is the model's."""
    if not isinstance(processor, expected):
        raise TypeError(
            f"apply_visionzip: `processor` must be a {expected.__name__} for "
            f"{type(model).__name__}, got {type(processor).__name__}"
        )
    if processor.image_token_id != model_config.image_token_id:
        raise ValueError(
            f"apply_visionzip: `processor` writes image token id {processor.image_token_id} but "
            f"the model's config.image_token_id is {model_config.image_token_id}"
        )


def patch_llava_processor(processor, budget: Budget) -> list[InstancePatch]:
    """Patch a ``LlavaProcessor`` instance to write ``dominant + contextual`` tokens per image."""
    methods = {
        "replace_image_token": functools.partial(replace_image_token, budget=budget),
        "_get_num_multimodal_tokens": functools.partial(get_num_multimodal_tokens, budget=budget),
    }
    return bind_methods(processor, methods, owner_arg="processor")


def patch_llava_next_processor(processor, budget: Budget) -> list[InstancePatch]:
    """Patch a ``LlavaNextProcessor`` instance to write the ``llava_next_image_tokens`` count per image."""
    methods = {"_get_number_of_features": functools.partial(get_number_of_features, budget=budget)}
    return bind_methods(processor, methods, owner_arg="processor")
