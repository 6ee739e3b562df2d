"""VisionZip in Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): what is particular to it.

Its vision encoder runs the patches in **window order**: the 2x2 merge units are permuted into
windows (``get_vision_window_index``), most blocks attend within a window and a few (the last among
them) over the whole image. The last block's statistics are therefore in window order, and
``window_index`` puts them back in raster order, the order of the merged features the model
returns. Everything else is shared (``qwen_vl_model.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLModel, Qwen2_5_VLProcessor
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.vision_utils import get_vision_window_index

from .qwen_vl_model import QwenFamily


@dataclass
class Qwen2_5_VLZipOutput(BaseModelOutputWithPooling):
    """The model's image output with VisionZip: ``pooler_output`` holds each image's kept tokens
    ``[K_i, D]`` (raster order), ``kept_idx`` their ``[K_i]`` int64 raster indices among the image's
    merged tokens; ``last_hidden_state`` is the encoder's, every patch, in window order."""

    kept_idx: tuple[torch.Tensor, ...] | None = None


def window_index(visual, image_grid_thw: torch.Tensor) -> torch.Tensor:
    """The raster merge unit of each unit in the encoder's window order, as the encoder computes it."""
    index, _ = get_vision_window_index(
        image_grid_thw,
        spatial_merge_size=visual.spatial_merge_size,
        window_size=visual.window_size,
        patch_size=visual.patch_size,
    )
    return index


QWEN2_5_VL = QwenFamily(
    "Qwen2.5-VL",
    (Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLModel),
    Qwen2_5_VLProcessor,
    Qwen2_5_VLZipOutput,
    window_index,
)
