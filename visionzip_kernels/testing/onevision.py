"""Tiny random LLaVA-OneVision models and processors built from configs (no download), and seeded
images and videos: for the tests and the benchmarks' CPU mode. Needs ``transformers`` and Pillow.

The tiny model: a SigLIP tower of ``image_size`` pixels in 14-pixel patches (112: 8 x 8 = 64 tokens
per crop or frame, pooled 2 x 2 to 4 x 4 = 16 per video frame by the stock model), 3 layers,
width 32, 4 heads, read at ``vision_feature_layer`` (``-1``, the last layer, as the released
checkpoints); a 2-layer Qwen2 text model. The processor: a word-level tokenizer of ``WORDS`` with
``<image>`` and ``<video>``, LLaVA-OneVision's Pillow image processor, and its video processor with
torchvision's resize and normalise done in plain torch (torchvision is not a dependency here).
"""
from __future__ import annotations

from unittest import mock

import numpy as np
import torch
from PIL import Image
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionProcessor,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)
from transformers import processing_utils
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)
from transformers.models.llava_onevision.video_processing_llava_onevision import (
    LlavaOnevisionVideoProcessor,
)
from transformers.video_processing_utils import VideoProcessorMixin

from .tiny_text import text_config_fields, word_tokenizer

PATCH_SIZE = 14
WORDS = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "<video>", "user", "assistant", "describe"]
WORDS += ["the", "image", "video", "and", "compare", "them", "?"] + [f"w{i}" for i in range(40)]
IMAGE_TOKEN_ID, VIDEO_TOKEN_ID = WORDS.index("<image>"), WORDS.index("<video>")


def tiny_config(image_size: int, pinpoints, **config_kwargs) -> LlavaOnevisionConfig:
    """A tiny LLaVA-OneVision config (module docstring); ``config_kwargs`` go to the config."""
    vision = SiglipVisionConfig(
        image_size=image_size,
        patch_size=PATCH_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        vision_use_head=False,
    )
    text = Qwen2Config(**text_config_fields(len(WORDS), max_position_embeddings=4096))
    return LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=IMAGE_TOKEN_ID,
        video_token_index=VIDEO_TOKEN_ID,
        image_grid_pinpoints=pinpoints,
        **config_kwargs,
    )


def tiny_model(image_size: int, pinpoints, seed: int = 0, **config_kwargs):
    """A ``LlavaOnevisionForConditionalGeneration`` of ``tiny_config``, seeded, in eval mode."""
    torch.manual_seed(seed)
    config = tiny_config(image_size, pinpoints, **config_kwargs)
    return LlavaOnevisionForConditionalGeneration(config).eval()


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer of ``WORDS``, padding on the left."""
    return word_tokenizer(WORDS, {"image_token": "<image>", "video_token": "<video>"})


class TorchVideoProcessor(LlavaOnevisionVideoProcessor):
    """LLaVA-OneVision's video processor with torchvision's two image ops done in plain torch."""

    def resize(self, image, size, resample=None, **kwargs):
        """``[..., C, H, W]`` uint8 -> ``[..., C, size.height, size.width]`` uint8, bilinear."""
        frames = image.reshape(-1, *image.shape[-3:]).float()
        resized = torch.nn.functional.interpolate(
            frames, size=(size.height, size.width), mode="bilinear", antialias=True
        )
        resized = resized.round().clamp(0, 255).to(image.dtype)
        return resized.reshape(*image.shape[:-2], size.height, size.width)

    def normalize(self, image, mean, std, **kwargs):
        """``(image - mean) / std`` per channel of ``[..., C, H, W]``."""
        mean = torch.as_tensor(mean, dtype=image.dtype).view(-1, 1, 1)
        std = torch.as_tensor(std, dtype=image.dtype).view(-1, 1, 1)
        return (image - mean) / std


def tiny_processor(image_size: int, pinpoints) -> LlavaOnevisionProcessor:
    """A ``LlavaOnevisionProcessor`` for ``tiny_model(image_size, pinpoints)``."""
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_grid_pinpoints=pinpoints
    )
    video_processor = TorchVideoProcessor(
        size={"height": image_size, "width": image_size}, do_convert_rgb=False
    )
    # Without torchvision the top-level name the processor checks a video processor against is
    # missing; give it the class it stands for while the processor checks its arguments.
    checked_names = processing_utils.transformers_module
    with mock.patch.object(checked_names, "VideoProcessorMixin", VideoProcessorMixin, create=True):
        return LlavaOnevisionProcessor(
            image_processor=image_processor,
            tokenizer=make_tokenizer(),
            video_processor=video_processor,
            num_image_tokens=(image_size // PATCH_SIZE) ** 2,
            vision_feature_select_strategy="full",
        )


def make_images(sizes, seed: int = 0) -> list[Image.Image]:
    """Seeded random RGB images of the given ``(height, width)`` sizes."""
    return [
        Image.fromarray(np.random.RandomState(seed + i).randint(0, 256, (h, w, 3), dtype=np.uint8))
        for i, (h, w) in enumerate(sizes)
    ]


def make_video(frames: int, height: int = 90, width: int = 130, seed: int = 0) -> np.ndarray:
    """A seeded random ``[frames, height, width, 3]`` uint8 video."""
    return np.random.RandomState(100 + seed).randint(0, 256, (frames, height, width, 3), dtype=np.uint8)
