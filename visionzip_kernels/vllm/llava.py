"""VisionZip in vLLM's LLaVA-1.5 and LLaVA-NeXT: the same features as ``apply_visionzip``'s.

Each class extends vLLM's own and changes nothing unless the config holds the switch
(``switch.py``). With it:

- the vision path: every crop goes through ``clip_tower.zipped_clip_tokens`` (``dominant +
  contextual`` tokens, the CLS token among them) and then the model's projector; LLaVA-NeXT lays
  an image's crops out as ``integrations/llava_next.py`` does (base crop, the rows of crops, one
  ``image_newline`` per row), not with vLLM's unpadded patch grid;
- the processor side: the processing info counts the same tokens per image
  (``integrations/llava_next.py``'s ``llava_next_image_tokens``), and vLLM's prompt-update
  mechanism (``PromptReplacement``) writes that many placeholders.
"""
from __future__ import annotations

import torch
from transformers import LlavaConfig, PixtralVisionConfig
from vllm.model_executor.models.llava import (
    LlavaDummyInputsBuilder,
    LlavaForConditionalGeneration,
    LlavaProcessingInfo,
    PixtralHFProcessingInfo,
    _build_llava_or_pixtral_hf_processor,
)
from vllm.model_executor.models.llava_next import (
    LlavaNextForConditionalGeneration,
    LlavaNextMultiModalProcessor,
    LlavaNextProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from ..integrations.llava_next import crop_grid, llava_next_image_tokens, pack_image
from .clip_tower import zipped_clip_tokens
from .switch import llava_budget

LLAVA = "LlavaForConditionalGeneration"
LLAVA_NEXT = "LlavaNextForConditionalGeneration"


class VisionZipLlavaProcessingInfo(LlavaProcessingInfo):
    """LLaVA-1.5's processing info: ``dominant + contextual`` placeholders per image when zipped."""

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        budget = llava_budget(self.get_hf_config(), LLAVA)
        if budget is None:
            return super().get_num_image_tokens(image_width=image_width, image_height=image_height)
        return budget.tokens


class VisionZipLlavaNextProcessingInfo(LlavaNextProcessingInfo):
    """LLaVA-NeXT's processing info: ``llava_next_image_tokens`` placeholders per image when zipped."""

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        hf_config = self.get_hf_config()
        budget = llava_budget(hf_config, LLAVA_NEXT)
        if budget is None:
            return super().get_num_image_tokens(image_width=image_width, image_height=image_height)
        crop_size = hf_config.vision_config.image_size
        rows, cols = crop_grid(
            (image_height, image_width), hf_config.image_grid_pinpoints, crop_size, crop_size
        )
        return llava_next_image_tokens(budget.tokens, rows, cols)


def _llava_info(ctx):
    """vLLM's choice of processing info for a LLaVA config, with ours in place of
    ``LlavaProcessingInfo`` (Pixtral-HF towers keep theirs)."""
    if isinstance(ctx.get_hf_config(LlavaConfig).vision_config, PixtralVisionConfig):
        return PixtralHFProcessingInfo(ctx)
    return VisionZipLlavaProcessingInfo(ctx)


class ZippedCropFeatures:
    """What both classes add to vLLM's: the switch read once, when the model is built, and each
    crop's features zipped when it is on. ``visionzip_architecture`` names the class in errors."""

    visionzip_architecture: str

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.visionzip_budget = llava_budget(self.config, self.visionzip_architecture)

    def _image_pixels_to_features(self, vision_tower, pixel_values):
        """``[crops, 3, H, W]`` -> ``[crops, dominant + contextual, D_vision]`` when zipped."""
        if self.visionzip_budget is None:
            return super()._image_pixels_to_features(vision_tower, pixel_values)
        return zipped_clip_tokens(vision_tower, pixel_values, self.visionzip_budget)


@MULTIMODAL_REGISTRY.register_processor(
    _build_llava_or_pixtral_hf_processor, info=_llava_info, dummy_inputs=LlavaDummyInputsBuilder
)
class VisionZipLlava(ZippedCropFeatures, LlavaForConditionalGeneration):
    """vLLM's LLaVA-1.5 with VisionZip's image features when the config holds the switch."""

    visionzip_architecture = LLAVA


@MULTIMODAL_REGISTRY.register_processor(
    LlavaNextMultiModalProcessor,
    info=VisionZipLlavaNextProcessingInfo,
    dummy_inputs=LlavaDummyInputsBuilder,
)
class VisionZipLlavaNext(ZippedCropFeatures, LlavaNextForConditionalGeneration):
    """vLLM's LLaVA-NeXT with VisionZip's image features when the config holds the switch."""

    visionzip_architecture = LLAVA_NEXT

    def _merge_image_patch_embeddings(
        self, image_size: torch.Tensor, patch_embeddings: torch.Tensor, *, strategy: str
    ) -> torch.Tensor:
        """One image's projected crops ``[crops (padded), t, D]`` -> its features, laid out as
        ``integrations/llava_next.py``'s ``pack_image`` when zipped."""
        if self.visionzip_budget is None:
            return super()._merge_image_patch_embeddings(
                image_size, patch_embeddings, strategy=strategy
            )
        crop_size = self.config.vision_config.image_size
        rows, cols = crop_grid(image_size, self.config.image_grid_pinpoints, crop_size, crop_size)
        crops = patch_embeddings[: 1 + rows * cols]
        return pack_image(crops, rows, cols, self.image_newline)
