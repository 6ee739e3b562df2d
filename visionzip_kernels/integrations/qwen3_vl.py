"""VisionZip in Qwen3-VL (``Qwen3VLForConditionalGeneration``): what is particular to it.

Its vision encoder keeps the merge units in raster order and attends over each whole image in every
block. Besides the merged features it returns **deepstack** features (one per
``deepstack_visual_indexes`` layer, each ``[T, D]`` like the main features), which the language
model adds to the image tokens' hidden states in its first layers; they are zipped with the same
indices and merges as the main features (``qwen_vl.zip_images``), so every kept token keeps its
deepstack rows. Everything else is shared (``qwen_vl_model.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Qwen3VLForConditionalGeneration, Qwen3VLModel, Qwen3VLProcessor
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

from .qwen_vl_model import QwenFamily


@dataclass
class Qwen3VLZipOutput(BaseModelOutputWithDeepstackFeatures):
    """The model's image output with VisionZip: ``pooler_output`` holds each image's kept tokens
    ``[K_i, D]`` (raster order), ``deepstack_features`` one entry per deepstack layer holding each
    image's rows for the same tokens, ``kept_idx`` their ``[K_i]`` int64 raster indices among the
    image's merged tokens; ``last_hidden_state`` is the encoder's, every patch."""

    kept_idx: tuple[torch.Tensor, ...] | None = None


def raster_order(visual, image_grid_thw: torch.Tensor) -> None:
    """Qwen3-VL's encoder keeps the raster order: no window index."""
    return None


QWEN3_VL = QwenFamily(
    "Qwen3-VL",
    (Qwen3VLForConditionalGeneration, Qwen3VLModel),
    Qwen3VLProcessor,
    Qwen3VLZipOutput,
    raster_order,
)
