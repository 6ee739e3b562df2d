"""VisionZip in ``Qwen2_5_VLProcessor`` and ``Qwen3VLProcessor``: each image's reduced placeholder count.

A Qwen-VL processor expands every ``<|image_pad|>`` in the text to the image's ``T = t h w / 4``
merged tokens (its ``image_grid_thw``). With VisionZip an image keeps ``Budget.tokens_for(T)`` of
them, and the processor is patched, on its instance, at the two methods that decide the count:
``replace_image_token`` (the placeholder string for one image, used by ``__call__``) and
``_get_num_multimodal_tokens`` (the same counts, for serving engines). Videos keep their count:
the model refuses video inputs while VisionZip is applied.
"""
from __future__ import annotations

import dataclasses
import functools

from transformers.processing_utils import MultiModalData

from .budget import Budget
from .handle import InstancePatch, bind_methods


def merged_tokens(image_grid_thw_row, merge_size: int) -> int:
    """Merged tokens of one image: ``t * h * w / merge_size**2``."""
    return int(image_grid_thw_row.prod()) // merge_size**2


def largest_image(processor) -> tuple[int, str]:
    """The most merged tokens an image from ``processor`` can have, and why: its image processor
    resizes every image to at most ``size["longest_edge"]`` pixels, in squares of
    ``patch_size * merge_size`` pixels per merged token."""
    image_processor = processor.image_processor
    square = image_processor.patch_size * image_processor.merge_size
    pixels = image_processor.size["longest_edge"]
    return pixels // square**2, f"image_processor.size['longest_edge'] = {pixels} pixels in {square}x{square} squares"


def replace_image_token(processor, image_inputs: dict, image_idx: int, *, budget: Budget, **kwargs) -> str:
    """The placeholder string of one image: its kept token count of ``<|image_pad|>``."""
    merge_size = processor.image_processor.merge_size
    size = merged_tokens(image_inputs["image_grid_thw"][image_idx], merge_size)
    return processor.image_token * budget.tokens_for(size)


def get_num_multimodal_tokens(
    processor, image_sizes=None, video_sizes=None, *, budget: Budget, **kwargs
) -> MultiModalData:
    """The processor's own counts, with each image's token count reduced to what VisionZip keeps."""
    counts = type(processor)._get_num_multimodal_tokens(processor, image_sizes, video_sizes, **kwargs)
    if image_sizes is None:
        return counts
    return dataclasses.replace(
        counts, num_image_tokens=[budget.tokens_for(size) for size in counts.num_image_tokens]
    )


def patch_qwen_vl_processor(processor, budget: Budget) -> list[InstancePatch]:
    """Patch a Qwen-VL processor instance to write each image's kept token count."""
    methods = {
        "replace_image_token": functools.partial(replace_image_token, budget=budget),
        "_get_num_multimodal_tokens": functools.partial(get_num_multimodal_tokens, budget=budget),
    }
    return bind_methods(processor, methods, owner_arg="processor")
