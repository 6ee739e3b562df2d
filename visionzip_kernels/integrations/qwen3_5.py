"""VisionZip in Qwen3.5 / Qwen3.6 (``Qwen3_5ForConditionalGeneration``, the MoE
``Qwen3_5MoeForConditionalGeneration``): what is particular to them.

Their vision encoder is Qwen3-VL's (16-pixel patches, 2x2 merge units in raster order, attention
over each whole image in every block, M-RoPE positions for the language model) without deepstack:
``get_image_features`` returns the merger's output only. The language model (dense or MoE, with
its linear-attention layers) receives the kept tokens like any other tokens, and the images'
placeholders are written by Qwen3-VL's processor. Everything else is shared (``qwen_vl_model.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    Qwen3_5ForConditionalGeneration,
    Qwen3_5Model,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3_5MoeModel,
    Qwen3VLProcessor,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .qwen3_vl import raster_order
from .qwen_vl_model import QwenFamily


@dataclass
class Qwen3_5ZipOutput(BaseModelOutputWithPooling):
    """The model's image output with VisionZip: ``pooler_output`` holds each image's kept tokens
    ``[K_i, D]`` (raster order), ``kept_idx`` their ``[K_i]`` int64 raster indices among the image's
    merged tokens; ``last_hidden_state`` is the encoder's, every patch."""

    kept_idx: tuple[torch.Tensor, ...] | None = None


QWEN3_5 = QwenFamily(
    "Qwen3.5",
    (Qwen3_5ForConditionalGeneration, Qwen3_5Model),
    Qwen3VLProcessor,
    Qwen3_5ZipOutput,
    raster_order,
)
QWEN3_5_MOE = QwenFamily(
    "Qwen3.5-MoE",
    (Qwen3_5MoeForConditionalGeneration, Qwen3_5MoeModel),
    Qwen3VLProcessor,
    Qwen3_5ZipOutput,
    raster_order,
)
