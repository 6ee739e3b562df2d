"""Tiny LLaVA checkpoints and the Hugging Face integration's results on them, for tests/vllm.

Run with the main environment's Python (transformers >= 5.25, where ``apply_visionzip`` runs):

    python tests/vllm/make_references.py OUT_DIR

For each family (``FAMILIES``) it saves, under ``OUT_DIR/<family>/``, a seeded random checkpoint
with its tokenizer and processor (``checkpoint/``, which vLLM serves), and ``references.pt``: for
each prompt of ``PROMPTS``, with VisionZip (``apply_visionzip``, budget ``DOMINANT`` +
``CONTEXTUAL``) and without, the prompt's token ids, the processor's pixel inputs, the image
features handed to the language model, the greedy tokens and each step's log-softmax of the raw
logits, all in float32. Each prompt runs alone (no padding). The vLLM tests (another environment,
the transformers vLLM pins) compare with these. ``OUT_DIR/llama/`` holds a text-only model, which
VisionZip does not support.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaProcessor,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import (
    LlavaNextImageProcessorPil,
)

from visionzip_kernels.testing.tiny_text import text_config_fields, word_tokenizer

DOMINANT, CONTEXTUAL = 5, 3
STEPS = 4
IMAGE_SIZE, PATCH = 56, 14
PINPOINTS = [[56, 112], [112, 56], [112, 112]]
WORDS = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "USER:", "ASSISTANT:", "describe", "the"]
WORDS += ["image", "and", "compare", "them", "?", "more", "please"] + [f"w{i}" for i in range(48)]
# (prompt, image sizes (height, width)): 40 x 90 -> a 1 x 2 grid of LLaVA-NeXT crops, 90 x 40 ->
# 2 x 1, 100 x 100 -> 2 x 2.
PROMPTS = [
    ("USER: <image> describe the image ? ASSISTANT:", [(40, 90)]),
    (
        "USER: <image> and <image> compare them please ? " + " ".join(WORDS[-12:]) + " ASSISTANT:",
        [(90, 40), (100, 100)],
    ),
]


def vision_config() -> CLIPVisionConfig:
    """CLIP of 56 x 56 pixels in 14-pixel patches (16 patches and a CLS token), 3 layers, width
    128, 4 heads of 32 (vLLM's CPU attention needs a head size of at least 32)."""
    return CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
    )


def text_config() -> LlamaConfig:
    """A 2-layer Llama of width 128, 4 query heads and 2 key/value heads of 32."""
    fields = text_config_fields(len(WORDS))
    fields.update(hidden_size=128, intermediate_size=256)
    return LlamaConfig(**fields)


def make_images(sizes, seed: int) -> list[Image.Image]:
    rng = np.random.RandomState(seed)
    return [Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def build_llava():
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=vision_config(),
        text_config=text_config(),
        image_token_id=WORDS.index("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=word_tokenizer(WORDS, {"image_token": "<image>"}),
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return LlavaForConditionalGeneration(config).eval(), processor


def build_llava_next():
    torch.manual_seed(0)
    config = LlavaNextConfig(
        vision_config=vision_config(),
        text_config=text_config(),
        image_token_id=WORDS.index("<image>"),
        image_grid_pinpoints=PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=PINPOINTS,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=word_tokenizer(WORDS, {"image_token": "<image>"}),
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return LlavaNextForConditionalGeneration(config).eval(), processor


FAMILIES = {"llava": build_llava, "llava_next": build_llava_next}


def run_prompt(model, processor, prompt: str, sizes, seed: int) -> dict:
    """One prompt, alone: its ids, pixel inputs, image features, greedy tokens and logprobs."""
    inputs = processor(text=[prompt], images=make_images(sizes, seed), return_tensors="pt")
    pixel_inputs = {key: value for key, value in inputs.items() if key in ("pixel_values", "image_sizes")}
    with torch.no_grad():
        features = model.model.get_image_features(**pixel_inputs).pooler_output
        output = model.generate(
            **inputs,
            max_new_tokens=STEPS,
            min_new_tokens=STEPS,
            do_sample=False,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
    prompt_ids = inputs["input_ids"][0]
    return {
        "prompt_ids": prompt_ids.tolist(),
        "pixel_inputs": pixel_inputs,
        "features": [feature.float() for feature in features],
        "tokens": output.sequences[0, len(prompt_ids):].tolist(),
        "logprobs": torch.stack([torch.log_softmax(step[0].float(), -1) for step in output.logits]),
    }


def save_checkpoint(model, processor, checkpoint: Path) -> None:
    """Save as published LLaVA checkpoints name their weights: the CLIP tower's under
    ``vision_tower.vision_model.`` (transformers 5 writes them without ``vision_model.``; vLLM's
    loader needs the published names)."""
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    weights_file = checkpoint / "model.safetensors"
    weights = load_file(weights_file)
    prefix = next(key for key in weights if ".vision_tower." in key or key.startswith("vision_tower."))
    prefix = prefix[: prefix.index("vision_tower.") + len("vision_tower.")]
    renamed = {
        key.replace(prefix, prefix + "vision_model.", 1) if key.startswith(prefix) else key: value
        for key, value in weights.items()
    }
    save_file(renamed, weights_file, metadata={"format": "pt"})


def write_family(name: str, out_dir: Path) -> None:
    model, processor = FAMILIES[name]()
    save_checkpoint(model, processor, out_dir / name / "checkpoint")
    references = {"stock": [], "zipped": []}
    for seed, (prompt, sizes) in enumerate(PROMPTS):
        references["stock"].append(run_prompt(model, processor, prompt, sizes, seed))
    from visionzip_kernels.integrations import apply_visionzip  # the main environment's transformers only

    with apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL):
        for seed, (prompt, sizes) in enumerate(PROMPTS):
            references["zipped"].append(run_prompt(model, processor, prompt, sizes, seed))
    torch.save(references, out_dir / name / "references.pt")


def write_text_model(out_dir: Path) -> None:
    """A text-only Llama (the families' language model), which VisionZip does not support."""
    torch.manual_seed(0)
    LlamaForCausalLM(text_config()).save_pretrained(out_dir / "llama")
    word_tokenizer(WORDS, {"image_token": "<image>"}).save_pretrained(out_dir / "llama")


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python tests/vllm/make_references.py OUT_DIR")
    out_dir = Path(argv[0])
    for name in FAMILIES:
        write_family(name, out_dir)
    write_text_model(out_dir)
    (out_dir / "complete").write_text("\n".join(FAMILIES) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
