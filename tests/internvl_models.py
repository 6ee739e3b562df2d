"""Tiny random InternVL models, tokenizer, processor and images for the tests.

Built from small configs, no download: an InternViT of 2 layers, width 32, 2 heads, 8-pixel
patches on 64-pixel tiles (8 x 8 = 64 patches and a CLS token per tile, pixel-shuffled to
4 x 4 = 16 tokens), a 2-layer Qwen2 language model of width 32; a word-level tokenizer with
InternVL's image tokens; the Pillow image processor of GOT-OCR2 cutting each image into up to 4
tiles of 64 x 64 plus a thumbnail. The processor is image-only (InternVL's video processor needs
torchvision, which the CPU job lacks). Weights and images are seeded.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

from visionzip_kernels.testing.tiny_text import text_config_fields, word_tokenizer

IMAGE_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
WORDS = ["<pad>", "<s>", "</s>", "<unk>", *IMAGE_TOKENS.values(), "user:", "assistant:", "describe"]
WORDS += ["the", "image", "and", "compare", "them", "?", "more", "please"] + [f"w{i}" for i in range(30)]
IMAGE_ID = WORDS.index("<IMG_CONTEXT>")
IMAGE = "<IMG_CONTEXT>"
TILE = 64
TILE_TOKENS = 16
# Greedy, three tokens, never an image token (a generated placeholder would need an image)
GENERATE = dict(
    max_new_tokens=3,
    min_new_tokens=3,
    do_sample=False,
    pad_token_id=0,
    suppress_tokens=[WORDS.index(token) for token in IMAGE_TOKENS.values()],
)

# Image sizes (height, width) in pixels and the tiles the processor cuts: 64 x 64 is one tile (no
# thumbnail), 64 x 128 two tiles and the thumbnail, 128 x 128 four tiles and the thumbnail.
SIZES = [(64, 64), (64, 128), (128, 128)]
TILES = [1, 3, 5]
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


def make_model(seed: int = 0, **config) -> InternVLForConditionalGeneration:
    """A tiny random ``InternVLForConditionalGeneration``; ``config`` overrides ``InternVLConfig`` fields."""
    torch.manual_seed(seed)
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=TILE,
        patch_size=8,
    )
    text = dict(text_config_fields(len(WORDS)), model_type="qwen2")
    fields = dict(vision_config=vision, text_config=text, image_token_id=IMAGE_ID, image_seq_length=TILE_TOKENS)
    model = InternVLForConditionalGeneration(InternVLConfig(**{**fields, **config})).eval()
    with torch.no_grad():  # InternViT starts its CLS token and position embeddings at zero
        embeddings = model.model.vision_tower.embeddings
        embeddings.cls_token.normal_()
        embeddings.position_embeddings.normal_(std=0.5)
    return model


def make_processor() -> InternVLProcessor:
    class ImageOnlyProcessor(InternVLProcessor):
        @classmethod
        def get_attributes(cls):
            return ["image_processor", "tokenizer"]

    ImageOnlyProcessor.__name__ = InternVLProcessor.__name__
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": TILE, "width": TILE}, crop_to_patches=True, min_patches=1, max_patches=4
    )
    return ImageOnlyProcessor(
        image_processor=image_processor,
        tokenizer=word_tokenizer(WORDS, IMAGE_TOKENS),
        image_seq_length=TILE_TOKENS,
    )


def make_images(which: list[int]) -> list[Image.Image]:
    """Seeded random RGB images: entries ``which`` of ``SIZES``."""
    images = []
    for index in which:
        pixels = np.random.RandomState(index).randint(0, 256, (*SIZES[index], 3), dtype=np.uint8)
        images.append(Image.fromarray(pixels))
    return images


def make_inputs(processor, batch: str):
    prompts, which = BATCHES[batch]
    return processor(text=prompts, images=make_images(which), return_tensors="pt", padding=True)
