"""Tiny Qwen2.5-VL and Qwen3-VL checkpoints and the Hugging Face integration's results on them.

Run in the main environment (transformers >= 5.25, ``apply_visionzip``), not in vLLM's, beside
``make_references.py`` and in the same layout: ``python tests/vllm/qwen_reference.py OUT_DIR``.
For each family it writes ``OUT_DIR/<family>/checkpoint/``, which vLLM serves (random float32
weights, seeded; the word tokenizer and the Pillow image processor of ``tests/qwen_vl_models.py``;
head sizes of 32, the smallest vLLM's CPU attention takes), and ``OUT_DIR/<family>/references.pt``:
``{"stock": [...], "zipped": [...]}``, one entry per case of ``CASES`` in order, without VisionZip
and with ``apply_visionzip(model, processor, 0.65, 0.05)``, each in float32:

- ``input_ids`` ``[L]``: the prompt, each image's placeholders reduced to its kept tokens;
- ``features`` ``[K, D]``: the rows the language model receives at the image tokens, in order
  (Qwen3-VL: the main features followed by each deepstack layer's, along the feature axis);
- ``positions`` ``[3, L]``: the M-RoPE positions;
- ``tokens`` ``[S]`` and ``logprobs`` ``[S, V]``: greedy tokens and each step's log-softmax of the
  raw logits (``output_logits``; ``min_new_tokens`` and the suppressed vision tokens change the
  scores, not the logits), ``STEPS`` steps.
"""
from __future__ import annotations

import pathlib
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from qwen_vl_models import (  # noqa: E402
    IMAGE,
    VISION_TOKENS,
    WORDS,
    language_model_inputs,
    make_processor,
    text_config,
    token_ids,
)
from transformers import (  # noqa: E402
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)


FAMILIES = ("qwen2_5_vl", "qwen3_vl")
STEPS = 4
SUPPRESSED = [WORDS.index(token) for token in VISION_TOKENS]
# (height, width) in pixels: a wide image, and a tall one (the case vLLM's own pruning positions
# get wrong); Qwen2.5-VL's 28-pixel and Qwen3-VL's 32-pixel merge units, the same merged grids:
# 3 x 5 = 15 and 6 x 3 = 18 merged tokens.
SIZES = {"qwen2_5_vl": [(84, 140), (168, 84)], "qwen3_vl": [(96, 160), (192, 96)]}
CASES = {
    "1-image": (f"user: {IMAGE} describe the image ? assistant:", [0]),
    "2-images": (f"user: {IMAGE} and {IMAGE} compare them please ? assistant:", [0, 1]),
}


def make_model(family: str, seed: int = 0):
    """A tiny random model whose vision and text heads are 32 wide (2 vision heads, 4 query and 2
    key/value text heads: TP=2 splits both)."""
    torch.manual_seed(seed)
    vision = dict(depth=3, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128)
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 4, 4]}
    text = text_config(hidden_size=128, intermediate_size=256, head_dim=32)
    if family == "qwen2_5_vl":
        config = Qwen2_5_VLConfig(
            vision_config=dict(vision, patch_size=14, window_size=56, fullatt_block_indexes=[2]),
            text_config=dict(text, rope_parameters=rope),
            **token_ids(),
        )
        return Qwen2_5_VLForConditionalGeneration(config).eval()
    config = Qwen3VLConfig(
        vision_config=dict(
            vision, patch_size=16, num_position_embeddings=16, deepstack_visual_indexes=[0, 1]
        ),
        text_config=dict(text, rope_parameters=dict(rope, mrope_interleaved=True)),
        **token_ids(),
    )
    return Qwen3VLForConditionalGeneration(config).eval()


def make_images(family: str, which: list[int]) -> list[Image.Image]:
    images = []
    for index in which:
        pixels = np.random.RandomState(10 + index).randint(0, 256, (*SIZES[family][index], 3), dtype=np.uint8)
        images.append(Image.fromarray(pixels))
    return images


def reference(model, processor, family: str, case: str) -> dict:
    prompt, which = CASES[case]
    inputs = processor(text=[prompt], images=make_images(family, which), return_tensors="pt")
    received = language_model_inputs(model, inputs)
    image_rows = inputs["input_ids"][0] == model.config.image_token_id
    features = [received["inputs_embeds"][0, image_rows]]
    features += list(received.get("deepstack_visual_embeds") or [])
    generated = model.generate(
        **inputs,
        max_new_tokens=STEPS,
        min_new_tokens=STEPS,
        do_sample=False,
        suppress_tokens=SUPPRESSED,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    logits = torch.stack(generated.logits, dim=1)[0].float()
    return dict(
        input_ids=inputs["input_ids"][0],
        features=torch.cat(features, dim=1),
        positions=received["position_ids"][:, 0],
        tokens=generated.sequences[0, inputs["input_ids"].shape[1] :],
        logprobs=torch.log_softmax(logits, dim=-1),
    )


def write(out_dir: pathlib.Path) -> None:
    for family in FAMILIES:
        model = make_model(family)
        processor = make_processor(family)
        model.save_pretrained(out_dir / family / "checkpoint")
        processor.save_pretrained(out_dir / family / "checkpoint")
        references = {"stock": [reference(model, processor, family, case) for case in CASES]}
        from visionzip_kernels.integrations import apply_visionzip  # the main environment's transformers only

        with apply_visionzip(model, processor, dominant=0.65, contextual=0.05):
            references["zipped"] = [reference(model, processor, family, case) for case in CASES]
        torch.save(references, out_dir / family / "references.pt")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/vllm/qwen_reference.py OUT_DIR")
    write(pathlib.Path(sys.argv[1]))
