"""VisionZip in the LLaVA processors: fewer placeholders per image (and per video frame).

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
- ``LlavaOnevisionProcessor``: ``replace_image_token``, ``replace_video_token`` (the placeholder
  strings, used by ``__call__``) and ``_get_num_multimodal_tokens`` return the counts of
  ``llava_onevision.py``, whatever ``vision_feature_select_strategy`` says (SigLIP has no CLS token).

The model's ``get_placeholder_mask`` is wrapped on its instance too (``patch_placeholder_check``):
a prompt written for the full token count, by a processor VisionZip was not applied to, fails
with a message that says so, not only with transformers' count mismatch.
"""
from __future__ import annotations

import functools

from transformers.processing_utils import MultiModalData

from .budget import Budget
from .handle import InstancePatch, bind_methods
from .llava_next import crop_grid, llava_next_image_tokens
from .llava_onevision import base_crop_image_tokens, onevision_image_tokens, onevision_video_tokens


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


def onevision_image_count(processor, height: int, width: int, orig_size, *, budget: Budget) -> int:
    """Placeholders of one image of a one-image LLaVA-OneVision prompt, ``height x width`` crops."""
    pinpoints = processor.image_processor.image_grid_pinpoints
    rows, cols = crop_grid(orig_size, pinpoints, height, width)
    return onevision_image_tokens(budget.tokens, rows, cols)


def images_in_prompt(batch_num_images, image_idx: int) -> int:
    """How many images the prompt holding image ``image_idx`` (counted over the batch) has."""
    first = 0
    for count in batch_num_images:
        if image_idx < first + count:
            return int(count)
        first += count
    raise IndexError(f"image {image_idx} is not among the batch's {first} images")


def replace_onevision_image_token(
    processor, image_inputs: dict, image_idx: int, *, budget: Budget, **kwargs
) -> str:
    """The placeholder string of one LLaVA-OneVision image: base crop only in a several-image
    prompt, base crop and grid otherwise."""
    if images_in_prompt(image_inputs["batch_num_images"], image_idx) != 1:
        return processor.image_token * base_crop_image_tokens(budget.tokens)
    height, width = image_inputs["pixel_values"][0][0].shape[-2:]
    size = image_inputs["image_sizes"][image_idx]
    count = onevision_image_count(processor, int(height), int(width), size, budget=budget)
    return processor.image_token * count


def replace_onevision_video_token(
    processor, video_inputs: dict, video_idx: int, *, budget: Budget, **kwargs
) -> str:
    """The placeholder string of one LLaVA-OneVision video: ``t`` per frame, one newline."""
    frames = video_inputs["pixel_values_videos"][video_idx]
    num_frames = len(frames) if isinstance(frames, (list, tuple)) else frames.shape[0]
    return processor.video_token * onevision_video_tokens(budget.tokens, num_frames)


def get_onevision_num_multimodal_tokens(
    processor, image_sizes=None, video_sizes=None, *, budget: Budget, **kwargs
) -> MultiModalData:
    """Image tokens per image (each alone in its prompt, as the stock method counts) and video
    tokens per video, given ``(height, width)`` image sizes and ``(frames, height, width)`` video sizes."""
    counts = {}
    if image_sizes is not None:
        size = processor._merge_kwargs(**kwargs)["images_kwargs"].get("size") or processor.image_processor.size
        crop = size["shortest_edge"] if "shortest_edge" in size else min(size["height"], size["width"])
        counts["num_image_tokens"] = [
            onevision_image_count(processor, crop, crop, image_size, budget=budget)
            for image_size in image_sizes
        ]
        counts["num_image_patches"] = [1] * len(image_sizes)
    if video_sizes is not None:
        counts["num_video_tokens"] = [
            onevision_video_tokens(budget.tokens, frames) for frames, _, _ in video_sizes
        ]
    return MultiModalData(**counts)


def check_processor(processor, expected: type, model, model_config) -> None:
    """Raise unless ``processor`` is an ``expected`` whose image (and video) token is the model's."""
    if not isinstance(processor, expected):
        raise TypeError(
            f"apply_visionzip: `processor` must be a {expected.__name__} for "
            f"{type(model).__name__}, got {type(processor).__name__}"
        )
    for kind in ("image", "video"):
        model_id = getattr(model_config, f"{kind}_token_id", None)
        written_id = getattr(processor, f"{kind}_token_id", None)
        if model_id is not None and written_id != model_id:
            raise ValueError(
                f"apply_visionzip: `processor` writes {kind} token id {written_id} but "
                f"the model's config.{kind}_token_id is {model_id}"
            )


def get_placeholder_mask(model, *args, budget: Budget, **kwargs):
    """The model's own ``get_placeholder_mask``; its error for a prompt whose image (video)
    placeholders do not match the zipped features says that VisionZip made the features and that
    the prompt needs the processor VisionZip patched."""
    try:
        return type(model).get_placeholder_mask(model, *args, **kwargs)
    except ValueError as error:
        if "features and" not in str(error) or "do not match" not in str(error):
            raise
        raise ValueError(
            f"VisionZip: the prompt's image placeholders do not match the zipped features ({error}). "
            f"VisionZip gives each image (each crop, each video frame) dominant + contextual = "
            f"{budget.tokens} tokens, and the prompt was written for the full token count: pass the "
            "model's processor to apply_visionzip(model, processor, ...) so that it writes the reduced "
            "placeholder count, or write that count yourself"
        ) from error


def patch_placeholder_check(llava_model, budget: Budget) -> list[InstancePatch]:
    """Patch ``get_placeholder_mask`` on a ``LlavaModel``/``LlavaNextModel``/``LlavaOnevisionModel``
    instance so that a prompt with the full placeholder count fails with VisionZip's message."""
    methods = {"get_placeholder_mask": functools.partial(get_placeholder_mask, budget=budget)}
    return bind_methods(llava_model, methods, owner_arg="model")


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


def patch_llava_onevision_processor(processor, budget: Budget) -> list[InstancePatch]:
    """Patch a ``LlavaOnevisionProcessor`` instance to write ``llava_onevision.py``'s counts."""
    methods = {
        "replace_image_token": functools.partial(replace_onevision_image_token, budget=budget),
        "replace_video_token": functools.partial(replace_onevision_video_token, budget=budget),
        "_get_num_multimodal_tokens": functools.partial(
            get_onevision_num_multimodal_tokens, budget=budget
        ),
    }
    return bind_methods(processor, methods, owner_arg="processor")
