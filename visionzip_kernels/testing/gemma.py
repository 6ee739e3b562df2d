"""Tiny random Gemma 3 and Gemma 4 models and processors built from configs (no download), for the
tests and the benchmarks' CPU mode. Needs ``transformers`` and Pillow.

Gemma 3: a SigLIP tower of 64-pixel images in 8-pixel patches (8 x 8 = 64 patches), 2 layers,
width 32, 4 heads; the projector pools 2 x 2 patches into ``GEMMA3_TOKENS`` = 16 soft tokens per
image (its projection drawn at random: transformers starts it at zero); a 2-layer Gemma 3 text
model. Its processor: a word-level tokenizer of ``GEMMA3_WORDS`` with Gemma's begin-of-image,
end-of-image and soft image tokens, and Gemma 3's Pillow image processor (pan-and-scan crops need
``pan_and_scan_min_crop_size`` of at most the image side in the call).

Gemma 4: its vision encoder over 4-pixel patches, 2 layers, width 32, 4 heads (2 key/value heads),
head size 8; images resized to at most ``GEMMA4_MAX_SOFT_TOKENS`` = 70 soft tokens of 3 x 3
patches (630 patches, padded to that length), so each aspect ratio gives its own count; a 2-layer
Gemma 4 text model. Its processor: Gemma 4's without the audio feature extractor and the video
processor (which needs torchvision), a word-level tokenizer of ``GEMMA4_WORDS``, Gemma 4's Pillow
image processor.
"""
from __future__ import annotations

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3Processor,
    Gemma3TextConfig,
    Gemma4Config,
    Gemma4ForConditionalGeneration,
    Gemma4Processor,
    Gemma4TextConfig,
    Gemma4VisionConfig,
    SiglipVisionConfig,
)
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

from .tiny_text import text_config_fields, word_tokenizer

GEMMA3_IMAGE_SIZE, GEMMA3_PATCH, GEMMA3_TOKENS = 64, 8, 16
GEMMA_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
GEMMA3_WORDS = ["<pad>", "<s>", "</s>", "<unk>", *GEMMA_TOKENS.values(), "user", "model", "describe", "the"]
GEMMA3_WORDS += ["image", "and", "compare", "them", "?", "more", "please", "Here", "is", "original"]
GEMMA3_WORDS += ["here", "are", "some", "crops", "to", "help", "you", "see", "better"]
GEMMA3_WORDS += [f"w{i}" for i in range(20)]
BOI_ID, EOI_ID, SOFT_ID = (GEMMA3_WORDS.index(token) for token in GEMMA_TOKENS.values())


def gemma3_model(seed: int = 0) -> Gemma3ForConditionalGeneration:
    """A tiny random ``Gemma3ForConditionalGeneration`` (module docstring), seeded, in eval mode."""
    torch.manual_seed(seed)
    vision = SiglipVisionConfig(
        image_size=GEMMA3_IMAGE_SIZE,
        patch_size=GEMMA3_PATCH,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        vision_use_head=False,
    )
    text = Gemma3TextConfig(
        **text_config_fields(len(GEMMA3_WORDS)), head_dim=8, query_pre_attn_scalar=8, sliding_window=64
    )
    config = Gemma3Config(
        vision_config=vision,
        text_config=text,
        mm_tokens_per_image=GEMMA3_TOKENS,
        boi_token_index=BOI_ID,
        eoi_token_index=EOI_ID,
        image_token_index=SOFT_ID,
    )
    model = Gemma3ForConditionalGeneration(config).eval()
    # transformers initialises the projection to zeros (checkpoints overwrite it): every soft token
    # would then be zero, and no test could tell one token or merge from another.
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.5)
    return model


def gemma3_processor() -> Gemma3Processor:
    """A ``Gemma3Processor`` for ``gemma3_model``."""
    size = {"height": GEMMA3_IMAGE_SIZE, "width": GEMMA3_IMAGE_SIZE}
    return Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size=size),
        tokenizer=word_tokenizer(GEMMA3_WORDS, GEMMA_TOKENS),
        image_seq_length=GEMMA3_TOKENS,
    )


GEMMA4_PATCH, GEMMA4_KERNEL, GEMMA4_MAX_SOFT_TOKENS = 4, 3, 70
GEMMA4_TOKENS = {
    "boi_token": "<|image>",
    "eoi_token": "<image|>",
    "image_token": "<|image|>",
    "boa_token": "<|audio>",
    "eoa_token": "<audio|>",
    "audio_token": "<|audio|>",
}
GEMMA4_WORDS = ["<pad>", "<s>", "</s>", "<unk>", *GEMMA4_TOKENS.values(), "<|video|>", *GEMMA3_WORDS[7:]]
GEMMA4_IMAGE_ID = GEMMA4_WORDS.index("<|image|>")


def gemma4_model(seed: int = 0) -> Gemma4ForConditionalGeneration:
    """A tiny random ``Gemma4ForConditionalGeneration`` (module docstring), seeded, in eval mode."""
    torch.manual_seed(seed)
    vision = Gemma4VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        patch_size=GEMMA4_PATCH,
        pooling_kernel_size=GEMMA4_KERNEL,
        position_embedding_size=64,
    )
    text = Gemma4TextConfig(
        **text_config_fields(len(GEMMA4_WORDS)),
        head_dim=8,
        global_head_dim=8,
        sliding_window=64,
        layer_types=["sliding_attention", "full_attention"],
        vocab_size_per_layer_input=len(GEMMA4_WORDS),
        hidden_size_per_layer_input=8,
    )
    token_ids = {
        f"{kind}_token_id": GEMMA4_WORDS.index(GEMMA4_TOKENS[f"{kind}_token"])
        for kind in ("boi", "eoi", "boa", "audio")
    }
    config = Gemma4Config(
        text_config=text,
        vision_config=vision,
        audio_config=None,
        image_token_id=GEMMA4_IMAGE_ID,
        video_token_id=GEMMA4_WORDS.index("<|video|>"),
        eoa_token_index=GEMMA4_WORDS.index("<audio|>"),
        **token_ids,
    )
    return Gemma4ForConditionalGeneration(config).eval()


class ImageGemma4Processor(Gemma4Processor):
    """``Gemma4Processor`` with ``None`` for its audio feature extractor and video processor."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument is None and argument_name in ("feature_extractor", "video_processor"):
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


def gemma4_processor() -> Gemma4Processor:
    """A ``Gemma4Processor`` (images and text) for ``gemma4_model``."""
    image_processor = Gemma4ImageProcessorPil(
        patch_size=GEMMA4_PATCH, pooling_kernel_size=GEMMA4_KERNEL, max_soft_tokens=GEMMA4_MAX_SOFT_TOKENS
    )
    tokenizer = word_tokenizer(GEMMA4_WORDS, GEMMA4_TOKENS)
    return ImageGemma4Processor(None, image_processor, tokenizer, None, image_seq_length=GEMMA4_MAX_SOFT_TOKENS)
