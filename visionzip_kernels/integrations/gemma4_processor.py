"""VisionZip in ``Gemma4Processor``: each image's kept soft-token count.

The stock processor writes, per image, begin-of-image, ``num_soft_tokens_per_image`` soft tokens
and end-of-image (``replace_image_token``), and counts each image's soft tokens from its size for
serving engines (``_get_num_multimodal_tokens``). Both are replaced on the instance: the stock
text with the image's run of soft tokens written as ``Budget.tokens_for(T)``, and that count. Video
and audio placeholders are the stock ones (VisionZip leaves videos and audio as they are).
"""
from __future__ import annotations

import dataclasses
import functools

from transformers import Gemma4Processor
from transformers.processing_utils import MultiModalData

from .budget import Budget
from .handle import InstancePatch, bind_methods


def replace_image_token(processor, image_inputs: dict, image_idx: int, *, budget: Budget, **kwargs) -> str:
    """The stock placeholder text of one image, its ``T`` soft tokens written as the kept count."""
    stock = type(processor).replace_image_token(processor, image_inputs, image_idx, **kwargs)
    size = int(image_inputs["num_soft_tokens_per_image"][image_idx])
    return stock.replace(processor.image_token * size, processor.image_token * budget.tokens_for(size))


def get_num_multimodal_tokens(
    processor, image_sizes=None, video_sizes=None, audio_lengths=None, *, budget: Budget, **kwargs
) -> MultiModalData:
    """The processor's own counts, each image's soft tokens reduced to what VisionZip keeps."""
    counts = type(processor)._get_num_multimodal_tokens(processor, image_sizes, video_sizes, audio_lengths, **kwargs)
    if image_sizes is None:
        return counts
    return dataclasses.replace(counts, num_image_tokens=[budget.tokens_for(n) for n in counts.num_image_tokens])


def check_gemma4_processor(processor, model, config, budget: Budget) -> None:
    """Raise ``TypeError`` unless ``processor`` is a ``Gemma4Processor``, ``ValueError`` unless it
    writes the model's soft image token, or for a budget not even the largest image
    (``max_soft_tokens`` of its image processor) can keep. Video tokens are not checked: VisionZip
    leaves videos as they are."""
    if not isinstance(processor, Gemma4Processor):
        raise TypeError(
            f"apply_visionzip: `processor` must be a Gemma4Processor for {type(model).__name__}, "
            f"got {type(processor).__name__}"
        )
    if processor.image_token_id != config.image_token_id:
        raise ValueError(
            f"apply_visionzip: `processor` writes image token id {processor.image_token_id} but the "
            f"model's config.image_token_id is {config.image_token_id}; use the processor saved with the model"
        )
    budget.counts(processor.image_processor.max_soft_tokens)


def patch_gemma4_processor(processor, budget: Budget) -> list[InstancePatch]:
    """Patch a ``Gemma4Processor`` instance to write each image's kept soft-token count."""
    methods = {
        "replace_image_token": functools.partial(replace_image_token, budget=budget),
        "_get_num_multimodal_tokens": functools.partial(get_num_multimodal_tokens, budget=budget),
    }
    return bind_methods(processor, methods, owner_arg="processor")
