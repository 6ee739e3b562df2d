"""Real Hugging Face LLaVA models with random weights, their processors, inputs, and twins.

``LlavaForConditionalGeneration`` (LLaVA-1.5) and ``LlavaNextForConditionalGeneration``
(LLaVA-NeXT) are built from a ``prefill.geometry.ModelGeometry`` (CLIP-L/14-336 and Vicuna-7B or
Mistral-7B at full size, toy sizes in tiny mode), straight on the device in the benchmark dtype.
The processor is the real one (``LlavaProcessor`` / ``LlavaNextProcessor`` with the CLIP and
LLaVA-NeXT image processors) over a local word-level tokenizer: nothing is downloaded. Each prompt
is ``system_tokens`` words, the image, ``question_tokens`` words; each image is a seeded random
square of twice the encoder's size (672 x 672 at full size: LLaVA-1.5 center-crops it to one
336 x 336 crop, LLaVA-NeXT cuts a base crop and a 2 x 2 grid, 5 crops).

Configurations are compared on **twins**: model objects of their own (own ``__dict__``, so their
own instance patches and compiled methods) that share every parameter, buffer and submodule with
the built model, so weights are resident once.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from PIL import Image
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaProcessor,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

from prefill.geometry import ModelGeometry
from visionzip_kernels.testing.tiny_text import word_tokenizer

SPECIAL_WORDS = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
PAD_ID, IMAGE_ID = 0, 4


def is_llava_next(geometry: ModelGeometry) -> bool:
    """LLaVA-NeXT geometries have several crops per image; LLaVA-1.5 has one."""
    return geometry.crops > 1


def grid_pinpoints(crop_size: int) -> list[list[int]]:
    """LLaVA-v1.6's ``image_grid_pinpoints`` in units of ``crop_size`` (336 gives the published ones)."""
    return [[crop_size * rows, crop_size * cols] for rows, cols in ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))]


def build_model(geometry: ModelGeometry, dtype: torch.dtype, device) -> torch.nn.Module:
    """The geometry's LLaVA or LLaVA-NeXT model, random weights, SDPA attention, eval mode."""
    common = dict(
        vision_config=geometry.encoder.config(), text_config=geometry.lm.config(),
        image_token_id=IMAGE_ID, vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    if is_llava_next(geometry):
        config = LlavaNextConfig(**common, image_grid_pinpoints=grid_pinpoints(geometry.encoder.image_size))
        model_class = LlavaNextForConditionalGeneration
    else:
        config = LlavaConfig(**common)
        model_class = LlavaForConditionalGeneration
    config.text_config.pad_token_id = PAD_ID
    with torch.device(device):
        model = model_class._from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.generation_config.pad_token_id = PAD_ID
    return model.eval()


def make_processor(geometry: ModelGeometry):
    """The geometry's real processor over a word-level tokenizer of the LM's vocabulary size."""
    words = [*SPECIAL_WORDS, *(f"w{i}" for i in range(geometry.lm.vocab - len(SPECIAL_WORDS)))]
    tokenizer = word_tokenizer(words, {"image_token": "<image>"})
    size = geometry.encoder.image_size
    image_options = dict(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    common = dict(
        tokenizer=tokenizer, patch_size=geometry.encoder.patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    if is_llava_next(geometry):
        image_processor = LlavaNextImageProcessorPil(**image_options, image_grid_pinpoints=grid_pinpoints(size))
        return LlavaNextProcessor(image_processor=image_processor, **common)
    return LlavaProcessor(image_processor=CLIPImageProcessorPil(**image_options), **common)


def prompts_and_images(geometry: ModelGeometry, batch: int) -> tuple[list[str], list[Image.Image]]:
    """``batch`` prompts (seeded random words around one image each) and their seeded random images."""
    random = np.random.RandomState(0)
    vocab_words = geometry.lm.vocab - len(SPECIAL_WORDS)

    def words(count: int) -> str:
        return " ".join(f"w{i}" for i in random.randint(0, vocab_words, count))

    prompts = [f"{words(geometry.system_tokens)} <image> {words(geometry.question_tokens)}" for _ in range(batch)]
    side = 2 * geometry.encoder.image_size
    images = [Image.fromarray(random.randint(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(batch)]
    return prompts, images


def twin(model: torch.nn.Module, *, language_model: bool = False) -> torch.nn.Module:
    """A LLaVA model object sharing every parameter, buffer and submodule with ``model``.

    The outer and inner (``model.model``) objects are shallow copies with their own ``__dict__``
    and module table: instance patches on the twin (``apply_visionzip``'s) do not reach
    ``model``. With ``language_model=True`` the language model is a shallow copy too, so its
    ``forward`` can be replaced (compiled) on the twin alone.
    """
    outer = copy.copy(model)
    outer._modules = dict(model._modules)
    inner = copy.copy(model.model)
    inner._modules = dict(model.model._modules)
    if language_model:
        inner._modules["language_model"] = copy.copy(model.model.language_model)
    outer._modules["model"] = inner
    return outer
