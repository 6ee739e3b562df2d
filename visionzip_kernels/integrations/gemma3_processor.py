"""VisionZip in ``Gemma3Processor``: ``dominant + contextual`` soft-token placeholders per image.

The stock processor replaces each begin-of-image token in the text by its ``full_image_sequence``
(begin-of-image, ``image_seq_length`` = 256 soft tokens, end-of-image, blank lines around), once
for the image and once per pan-and-scan crop (``replace_image_token``), and counts 256 tokens per
image for serving engines (``_get_num_multimodal_tokens``). Both are replaced on the instance:
the stock placeholder text with each run of 256 soft tokens written as ``dominant + contextual``,
and that count per image.

Note the ids: the processor's ``image_token_id`` is the **begin-of-image** id (the token a prompt
holds, one per image); the soft token the model fills with features is the tokenizer's
``image_token_id``, the model's ``config.image_token_id``.
"""
from __future__ import annotations

import dataclasses
import functools

from transformers import Gemma3Processor
from transformers.processing_utils import MultiModalData

from .budget import Budget
from .handle import InstancePatch, bind_methods


def replace_image_token(processor, image_inputs: dict, image_idx: int, *, budget: Budget, **kwargs) -> str:
    """The stock placeholder text of one image (and its crops), each block of soft tokens reduced
    to ``dominant + contextual``."""
    stock = type(processor).replace_image_token(processor, image_inputs, image_idx, **kwargs)
    soft_token = processor.tokenizer.image_token
    return stock.replace(soft_token * processor.image_seq_length, soft_token * budget.tokens)


def get_num_multimodal_tokens(processor, image_sizes=None, *, budget: Budget, **kwargs) -> MultiModalData:
    """Soft tokens and patches per image, given their ``(height, width)`` sizes (no crops, as the
    stock method counts)."""
    counts = type(processor)._get_num_multimodal_tokens(processor, image_sizes, **kwargs)
    if image_sizes is None:
        return counts
    return dataclasses.replace(counts, num_image_tokens=[budget.tokens] * len(image_sizes))


def check_gemma3_processor(processor, model, config) -> None:
    """Raise unless ``processor`` is a ``Gemma3Processor`` writing the model's soft token, its
    begin-of-image token, and ``config.mm_tokens_per_image`` soft tokens per image."""
    if not isinstance(processor, Gemma3Processor):
        raise TypeError(
            f"apply_visionzip: `processor` must be a Gemma3Processor for {type(model).__name__}, "
            f"got {type(processor).__name__}"
        )
    written = {
        "soft image token id (tokenizer.image_token_id)": (processor.tokenizer.image_token_id, config.image_token_id),
        "begin-of-image token id (image_token_id)": (processor.image_token_id, config.boi_token_id),
        "soft tokens per image (image_seq_length)": (processor.image_seq_length, config.mm_tokens_per_image),
    }
    for what, (value, expected) in written.items():
        if value != expected:
            raise ValueError(
                f"apply_visionzip: `processor` writes {what} {value} but the model expects {expected}; "
                "use the processor saved with the model"
            )


def patch_gemma3_processor(processor, budget: Budget) -> list[InstancePatch]:
    """Patch a ``Gemma3Processor`` instance to write ``dominant + contextual`` soft tokens per image."""
    methods = {
        "replace_image_token": functools.partial(replace_image_token, budget=budget),
        "_get_num_multimodal_tokens": functools.partial(get_num_multimodal_tokens, budget=budget),
    }
    return bind_methods(processor, methods, owner_arg="processor")
