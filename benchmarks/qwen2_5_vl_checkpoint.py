"""Qwen2.5-VL-7B's geometry for the serving benchmark: a config and a processor, no weights.

``write_checkpoint(folder, lm_layers)`` writes what vLLM needs to serve the geometry with random
weights (``load_format="dummy"``): Qwen2.5-VL-7B's vision tower at full size (32 blocks of width
1280, 16 heads, 14-pixel patches, 2 x 2 merge, windows of 112 pixels, full attention in blocks 7,
15, 23 and 31) and its language model at real width (3584, 28 query and 4 key/value heads of 128,
M-RoPE sections 16/24/24), keeping the first ``lm_layers`` of its 28 layers (all: ``None``); a
word-level tokenizer of ``VOCAB_WORDS`` random words and Qwen's vision tokens, and Qwen2-VL's
Pillow image processor with the model's pixel limits. Where torchvision is missing (vLLM's CPU
wheels), the processor is saved without a video processor, as images are all the benchmark sends.

``make_prompt(words)``: a prompt of the given words around one image placeholder.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from transformers import Qwen2_5_VLConfig, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from visionzip_kernels.testing.tiny_text import SPECIAL_WORDS, word_tokenizer

VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
VOCAB_WORDS = 1000
WORDS = [*SPECIAL_WORDS, *VISION_TOKENS] + [f"w{i}" for i in range(VOCAB_WORDS)]
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    out_hidden_size=3584,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    hidden_act="silu",
    tokens_per_second=2,
)
TEXT = dict(
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    rms_norm_eps=1e-6,
    max_position_embeddings=32768,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    vocab_size=len(WORDS),
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
MIN_PIXELS, MAX_PIXELS = 56 * 56, 28 * 28 * 1280


def make_config(lm_layers: int | None = None) -> Qwen2_5_VLConfig:
    text = dict(TEXT, num_hidden_layers=lm_layers or TEXT["num_hidden_layers"])
    config = Qwen2_5_VLConfig(
        vision_config=VISION,
        text_config=text,
        image_token_id=WORDS.index("<|image_pad|>"),
        video_token_id=WORDS.index("<|video_pad|>"),
        vision_start_token_id=WORDS.index("<|vision_start|>"),
        vision_end_token_id=WORDS.index("<|vision_end|>"),
    )
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    return config


class ImageOnlyProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor without its video processor (which needs torchvision)."""

    @classmethod
    def get_attributes(cls):
        return ["image_processor", "tokenizer"]


def make_processor() -> Qwen2_5_VLProcessor:
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=VISION["patch_size"],
        merge_size=VISION["spatial_merge_size"],
        temporal_patch_size=VISION["temporal_patch_size"],
        size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
    )
    names = ("image_token", "video_token", "vision_start_token", "vision_end_token")
    tokenizer = word_tokenizer(WORDS, dict(zip(names, VISION_TOKENS)))
    if importlib.util.find_spec("torchvision") is None:
        return ImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer)
    from transformers import Qwen2VLVideoProcessor

    return Qwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor()
    )


def write_checkpoint(folder: Path, lm_layers: int | None = None) -> None:
    """Qwen2.5-VL-7B's config (``lm_layers`` language model layers) and processor in ``folder``."""
    make_config(lm_layers).save_pretrained(folder)
    make_processor().save_pretrained(folder)


def make_prompt(words: str) -> str:
    return f"{words} {IMAGE} {words}"
