"""Tiny random Qwen2.5-VL, Qwen3-VL and Qwen3.5 models, tokenizer, processors and images for the tests.

Built from small configs, no download: vision encoders of 3 blocks, width 32, 2 heads (Qwen2.5-VL:
14-pixel patches, windows of 2 x 2 merge units, the last block full attention; Qwen3-VL: 16-pixel
patches, deepstack after blocks 0 and 1; Qwen3.5, dense and MoE: Qwen3-VL's encoder without
deepstack, a linear-attention layer then a full-attention layer, the MoE with 4 experts of which
2 are routed per token), 2-layer language models of width 32 with M-RoPE; a
word-level tokenizer with Qwen's vision tokens; the Pillow image processor of Qwen2-VL. The
processors are image-only (Qwen's video processors need torchvision, which the CPU job lacks).
Weights and images are seeded.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeConfig,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from visionzip_kernels.testing.tiny_text import text_config_fields, word_tokenizer

VISION_TOKENS = ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]
WORDS = ["<pad>", "<s>", "</s>", "<unk>", *VISION_TOKENS, "user:", "assistant:", "describe", "the"]
WORDS += ["image", "and", "compare", "them", "?", "more", "please"] + [f"w{i}" for i in range(30)]
IMAGE_ID = WORDS.index("<|image_pad|>")
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
PATCH = {"qwen2_5_vl": 14, "qwen3_vl": 16, "qwen3_5": 16, "qwen3_5_moe": 16}
MERGE = 2
# Greedy, three tokens, never a vision token (a generated placeholder would need an image)
GENERATE = dict(
    max_new_tokens=3,
    min_new_tokens=3,
    do_sample=False,
    pad_token_id=0,
    suppress_tokens=[WORDS.index(token) for token in VISION_TOKENS],
)

# Image sizes (height, width) in pixels, multiples of 28 and 32, so both processors keep them:
# Qwen2.5-VL grids 4x6, 6x8, 8x8 patches (6, 12, 16 merged tokens), Qwen3-VL and Qwen3.5 4x6, 6x8,
# 8x8 too at 64x96, 96x128, 128x128. The images of a batch are listed in prompt order.
SIZES = {"qwen2_5_vl": [(56, 84), (84, 112), (112, 112)]}
SIZES |= {family: [(64, 96), (96, 128), (128, 128)] for family in ("qwen3_vl", "qwen3_5", "qwen3_5_moe")}
MERGED_TOKENS = [6, 12, 16]
BATCHES = {
    "1-image": ([f"user: {IMAGE} describe the image ? assistant:"], [0]),
    "2-images": (
        [f"user: {IMAGE} describe the image ? assistant:", f"user: {IMAGE} more ? assistant:"],
        [1, 2],
    ),
    "3-images": (
        [
            f"user: {IMAGE} describe the image ? assistant:",
            f"user: {IMAGE} and {IMAGE} compare them please ? assistant:",
        ],
        [0, 1, 2],
    ),
}


def make_tokenizer() -> PreTrainedTokenizerFast:
    names = ["image_token", "video_token", "vision_start_token", "vision_end_token"]
    return word_tokenizer(WORDS, dict(zip(names, VISION_TOKENS)))


def text_config(**extra) -> dict:
    return {**text_config_fields(len(WORDS)), **extra}


def token_ids() -> dict:
    return dict(
        image_token_id=IMAGE_ID,
        video_token_id=WORDS.index("<|video_pad|>"),
        vision_start_token_id=WORDS.index("<|vision_start|>"),
        vision_end_token_id=WORDS.index("<|vision_end|>"),
    )


def make_model(family: str, seed: int = 0):
    """A tiny random ``Qwen2_5_VLForConditionalGeneration``, ``Qwen3VLForConditionalGeneration``,
    ``Qwen3_5ForConditionalGeneration`` or ``Qwen3_5MoeForConditionalGeneration``."""
    torch.manual_seed(seed)
    vision = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32)
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}
    if family in ("qwen3_5", "qwen3_5_moe"):
        return make_qwen3_5(family, dict(vision, patch_size=16, num_position_embeddings=16), rope)
    if family == "qwen2_5_vl":
        config = Qwen2_5_VLConfig(
            vision_config=dict(vision, patch_size=14, window_size=56, fullatt_block_indexes=[2]),
            text_config=text_config(rope_parameters=rope),
            **token_ids(),
        )
        return Qwen2_5_VLForConditionalGeneration(config).eval()
    config = Qwen3VLConfig(
        vision_config=dict(
            vision, patch_size=16, num_position_embeddings=16, deepstack_visual_indexes=[0, 1]
        ),
        text_config=text_config(head_dim=8, rope_parameters=dict(rope, mrope_interleaved=True)),
        **token_ids(),
    )
    return Qwen3VLForConditionalGeneration(config).eval()


def make_qwen3_5(family: str, vision: dict, rope: dict):
    """Qwen3.5 (dense or MoE): one linear-attention (gated delta rule) and one full-attention layer."""
    text = text_config(
        head_dim=8,
        rope_parameters=dict(rope, mrope_interleaved=True),
        layer_types=["linear_attention", "full_attention"],
        linear_key_head_dim=8,
        linear_value_head_dim=8,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
    )
    if family == "qwen3_5":
        config = Qwen3_5Config(vision_config=vision, text_config=text, **token_ids())
        return Qwen3_5ForConditionalGeneration(config).eval()
    experts = dict(
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16
    )
    config = Qwen3_5MoeConfig(vision_config=vision, text_config=dict(text, **experts), **token_ids())
    return Qwen3_5MoeForConditionalGeneration(config).eval()


def image_only(processor_class):
    """``processor_class`` without its video processor (an attribute that needs torchvision)."""

    class ImageOnlyProcessor(processor_class):
        @classmethod
        def get_attributes(cls):
            return ["image_processor", "tokenizer"]

    ImageOnlyProcessor.__name__ = processor_class.__name__
    return ImageOnlyProcessor


def make_processor(family: str):
    patch = PATCH[family]
    unit = (MERGE * patch) ** 2
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch,
        merge_size=MERGE,
        temporal_patch_size=2,
        size={"shortest_edge": unit, "longest_edge": unit * 64},
    )
    processor_class = Qwen2_5_VLProcessor if family == "qwen2_5_vl" else Qwen3VLProcessor
    return image_only(processor_class)(image_processor=image_processor, tokenizer=make_tokenizer())


def make_images(family: str, which: list[int]) -> list[Image.Image]:
    """Seeded random RGB images: entries ``which`` of ``SIZES[family]``."""
    images = []
    for index in which:
        pixels = np.random.RandomState(index).randint(0, 256, (*SIZES[family][index], 3), dtype=np.uint8)
        images.append(Image.fromarray(pixels))
    return images


def make_inputs(family: str, processor, batch: str):
    prompts, which = BATCHES[batch]
    return processor(text=prompts, images=make_images(family, which), return_tensors="pt", padding=True)


def language_model_inputs(model, inputs) -> dict:
    """The keyword arguments the language model receives in one forward pass of ``model``."""
    captured = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(kwargs), with_kwargs=True
    )
    with torch.no_grad():
        captured["logits"] = model(**inputs).logits
    hook.remove()
    return captured
