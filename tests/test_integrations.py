"""``visionzip_kernels.integrations``: VisionZip in tiny random LLaVA, LLaVA-NeXT, CLIP, SigLIP.

Every model, tokenizer and processor is built here from a small config (no download): vision
encoders of 56 x 56 pixels in 14-pixel patches (16 patches, plus a CLS token for CLIP), 3 layers,
width 32, 4 heads; a 2-layer Llama text model; a word-level tokenizer with the ``<image>`` token;
Pillow image processors. The budget is 5 dominant + 3 contextual tokens per image (per crop).
Weights and images are seeded.
"""
from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.models.clip import modeling_clip
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import (
    LlavaNextImageProcessorPil,
)
from transformers.models.siglip import modeling_siglip

from visionzip_kernels import zip_tokens
from visionzip_kernels.integrations import VisionZipHandle, apply_visionzip
from visionzip_kernels.testing.tiny_text import text_config_fields, word_tokenizer

DOMINANT, CONTEXTUAL = 5, 3
TOKENS = DOMINANT + CONTEXTUAL
IMAGE_SIZE, PATCH = 56, 14
PINPOINTS = [[56, 112], [112, 56], [112, 112]]
WORDS = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "USER:", "ASSISTANT:", "describe", "the"]
WORDS += ["image", "and", "compare", "them", "?", "more", "please"] + [f"w{i}" for i in range(40)]
IMAGE_ID = WORDS.index("<image>")
GENERATE = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)


# ----------------------------------------------------------------------------- builders


def make_tokenizer() -> PreTrainedTokenizerFast:
    return word_tokenizer(WORDS, {"image_token": "<image>"})


def vision_config(tower: str):
    config_class = CLIPVisionConfig if tower == "clip" else SiglipVisionConfig
    return config_class(
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
    )


def text_config() -> LlamaConfig:
    return LlamaConfig(**text_config_fields(len(WORDS)))


def strategy(tower: str) -> str:
    """LLaVA's usual feature strategy: drop the CLS token of CLIP; SigLIP has none."""
    return "default" if tower == "clip" else "full"


def make_llava(tower: str = "clip", seed: int = 0, **config_kwargs):
    torch.manual_seed(seed)
    config = LlavaConfig(
        vision_config=vision_config(tower),
        text_config=text_config(),
        image_token_id=IMAGE_ID,
        vision_feature_layer=config_kwargs.pop("vision_feature_layer", -2),
        vision_feature_select_strategy=strategy(tower),
        **config_kwargs,
    )
    return LlavaForConditionalGeneration(config).eval()


def make_llava_next(tower: str = "clip", seed: int = 0) -> LlavaNextForConditionalGeneration:
    torch.manual_seed(seed)
    config = LlavaNextConfig(
        vision_config=vision_config(tower),
        text_config=text_config(),
        image_token_id=IMAGE_ID,
        image_grid_pinpoints=PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy=strategy(tower),
    )
    return LlavaNextForConditionalGeneration(config).eval()


def make_llava_processor(tower: str = "clip") -> LlavaProcessor:
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=make_tokenizer(),
        patch_size=PATCH,
        vision_feature_select_strategy=strategy(tower),
        num_additional_image_tokens=int(tower == "clip"),
    )


def make_llava_next_processor(tower: str = "clip") -> LlavaNextProcessor:
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=PINPOINTS,
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=make_tokenizer(),
        patch_size=PATCH,
        vision_feature_select_strategy=strategy(tower),
        num_additional_image_tokens=int(tower == "clip"),
    )


def make_images(sizes) -> list[Image.Image]:
    """Seeded random RGB images of the given ``(height, width)`` sizes."""
    return [
        Image.fromarray(np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8))
        for seed, (h, w) in enumerate(sizes)
    ]


# 40 x 90 -> a 1 x 2 grid of crops, 90 x 40 -> 2 x 1, 100 x 100 -> 2 x 2 (PINPOINTS, 56-pixel crops)
IMAGE_SIZES = [(40, 90), (90, 40), (100, 100)]
# LLaVA-NeXT tokens per image: TOKENS * (1 + rows * cols) + rows (layout.py)
NEXT_TOKENS = [TOKENS * 3 + 1, TOKENS * 3 + 2, TOKENS * 5 + 2]
# (prompts, images): one prompt with one image; two prompts with three images, two in the second
BATCHES = {
    "1-image": (["USER: <image> describe the image ? ASSISTANT:"], IMAGE_SIZES[:1]),
    "3-images": (
        [
            "USER: <image> describe the image ? ASSISTANT:",
            "USER: <image> and <image> compare them please ? ASSISTANT:",
        ],
        IMAGE_SIZES,
    ),
}


def make_inputs(processor, batch: str):
    prompts, sizes = BATCHES[batch]
    return processor(text=prompts, images=make_images(sizes), return_tensors="pt", padding=True)


# ----------------------------------------------------------------------------- references


def published_zip(tower, pixel_values: torch.Tensor, has_cls: bool):
    """VisionZip as published: eager attention probabilities and keys of the penultimate layer.

    Runs a copy of ``tower`` under eager attention with ``output_attentions=True``, takes
    ``attentions[-2]``, ``hidden_states[-2]`` and the penultimate layer's key projections, and
    applies the reference ``zip_tokens``. Returns ``(tokens [B, TOKENS, D], dominant_idx)``.
    """
    eager = copy.deepcopy(tower)
    eager.set_attn_implementation("eager")
    keys = {}
    key_proj = eager.encoder.layers[-2].self_attn.k_proj
    hook = key_proj.register_forward_hook(lambda module, args, output: keys.setdefault("k", output))
    with torch.no_grad():
        out = eager(pixel_values, output_attentions=True, output_hidden_states=True)
    hook.remove()
    hidden = out.hidden_states[-2]
    batch, n_tokens, _ = hidden.shape
    heads = eager.config.num_attention_heads
    per_head_keys = keys["k"].view(batch, n_tokens, heads, -1).transpose(1, 2)
    attn = out.attentions[-2]
    return zip_tokens(
        hidden, attn, DOMINANT, CONTEXTUAL, per_head_keys, has_cls, backend="reference"
    )


def language_model_image_rows(model, inputs) -> torch.Tensor:
    """The language model's input embeddings at the image placeholders, ``[tokens, D_text]``."""
    captured = {}

    def capture(module, args, kwargs):
        captured["embeds"] = kwargs["inputs_embeds"]

    hook = model.model.language_model.register_forward_pre_hook(capture, with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
    hook.remove()
    return captured["embeds"][inputs["input_ids"] == IMAGE_ID]


def llava_next_layout(crop_features, grids, newline: torch.Tensor) -> torch.Tensor:
    """LLaVA-NeXT features in the documented order, written out crop by crop.

    crop_features: per image, ``[1 + rows * cols, TOKENS, D]``; grids: per image ``(rows, cols)``.
    """
    rows_out = []
    for crops, (rows, cols) in zip(crop_features, grids):
        rows_out.append(crops[0])
        for row in range(rows):
            for col in range(cols):
                rows_out.append(crops[1 + row * cols + col])
            rows_out.append(newline[None])
    return torch.cat(rows_out, dim=0)


def grid_of(size) -> tuple[int, int]:
    """The crop grid of IMAGE_SIZES' images (see the comment there)."""
    return {(40, 90): (1, 2), (90, 40): (2, 1), (100, 100): (2, 2)}[tuple(size)]


# ----------------------------------------------------------------------------- tests


def test_importing_the_package_does_not_import_transformers():
    code = "import sys, visionzip_kernels; assert 'transformers' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_generate_runs_with_reduced_placeholders(family, batch):
    model = make_llava() if family == "llava" else make_llava_next()
    processor = make_llava_processor() if family == "llava" else make_llava_next_processor()
    stock_count = int((make_inputs(processor, batch)["input_ids"] == IMAGE_ID).sum())
    with apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL):
        inputs = make_inputs(processor, batch)
        output_ids = model.generate(**inputs, **GENERATE)
    _, sizes = BATCHES[batch]
    per_image = [TOKENS] * len(sizes) if family == "llava" else NEXT_TOKENS[: len(sizes)]
    assert int((inputs["input_ids"] == IMAGE_ID).sum()) == sum(per_image) < stock_count
    assert output_ids.shape == (inputs["input_ids"].shape[0], inputs["input_ids"].shape[1] + 3)
    assert torch.equal(output_ids[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])


@pytest.mark.parametrize("tower", ["clip", "siglip"])
def test_llava_features_match_the_published_computation(tower):
    model = make_llava(tower)
    processor = make_llava_processor(tower)
    apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL)
    inputs = make_inputs(processor, "3-images")
    vision_tower, pixel_values = model.model.vision_tower, inputs["pixel_values"]
    expected_tokens, expected_idx = published_zip(vision_tower, pixel_values, tower == "clip")
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=pixel_values)
        expected = model.model.multi_modal_projector(expected_tokens).flatten(0, 1)
    assert torch.equal(features.dominant_idx, expected_idx)
    if tower == "clip":
        assert bool((expected_idx[:, 0] == 0).all()), "the CLS token is kept"
    torch.testing.assert_close(features.last_hidden_state, expected_tokens, atol=1e-5, rtol=1e-5)
    received = language_model_image_rows(model, inputs)
    torch.testing.assert_close(received, expected, atol=1e-5, rtol=1e-5)


def test_llava_next_features_match_the_published_computation_per_crop():
    model = make_llava_next()
    processor = make_llava_next_processor()
    apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL)
    inputs = make_inputs(processor, "3-images")
    grids = [grid_of(size) for size in inputs["image_sizes"].tolist()]
    per_image_pixels = zip(inputs["pixel_values"], grids)
    crops = torch.cat([pixels[: 1 + rows * cols] for pixels, (rows, cols) in per_image_pixels])
    expected_tokens, expected_idx = published_zip(model.model.vision_tower, crops, has_cls=True)
    with torch.no_grad():
        features = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"])
        projected = model.model.multi_modal_projector(expected_tokens)
        per_image = torch.split(projected, [1 + r * c for r, c in grids])
        expected = llava_next_layout(per_image, grids, model.model.image_newline)
    assert torch.equal(features.dominant_idx, expected_idx)
    assert [len(f) for f in features.pooler_output] == NEXT_TOKENS
    received = language_model_image_rows(model, inputs)
    torch.testing.assert_close(received, expected, atol=1e-5, rtol=1e-5)


def test_llava_next_processor_counts_match_the_features():
    model = make_llava_next()
    processor = make_llava_next_processor()
    apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL)
    inputs = make_inputs(processor, "3-images")
    with torch.no_grad():
        features = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"])
    lengths = [len(f) for f in features.pooler_output]
    placeholders = (inputs["input_ids"] == IMAGE_ID).sum(dim=1).tolist()
    assert placeholders == [lengths[0], lengths[1] + lengths[2]]
    served = processor._get_num_multimodal_tokens(image_sizes=IMAGE_SIZES)
    assert served.num_image_tokens == lengths == NEXT_TOKENS


def test_llava_processor_counts_match_the_features():
    model = make_llava()
    processor = make_llava_processor()
    apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL)
    inputs = make_inputs(processor, "3-images")
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=inputs["pixel_values"])
    assert [len(f) for f in features.pooler_output] == [TOKENS] * 3
    assert (inputs["input_ids"] == IMAGE_ID).sum(dim=1).tolist() == [TOKENS, 2 * TOKENS]
    served = processor._get_num_multimodal_tokens(image_sizes=IMAGE_SIZES)
    assert served.num_image_tokens == [TOKENS] * 3


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_second_turn_reuses_the_cache_without_pixels(family):
    model = make_llava() if family == "llava" else make_llava_next()
    processor = make_llava_processor() if family == "llava" else make_llava_next_processor()
    apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL)
    prompts = ["USER: <image> describe the image ? ASSISTANT:", "USER: <image> more ? ASSISTANT:"]
    images = make_images(IMAGE_SIZES[:2])
    inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True)
    first = model.generate(**inputs, **GENERATE, return_dict_in_generate=True)

    follow_up = processor.tokenizer(
        ["USER: more please ? ASSISTANT:"] * 2, add_special_tokens=False, return_tensors="pt"
    )
    input_ids = torch.cat([first.sequences, follow_up["input_ids"]], dim=1)
    new_positions = input_ids.shape[1] - inputs["attention_mask"].shape[1]
    attention_mask = torch.cat(
        [inputs["attention_mask"], torch.ones(2, new_positions, dtype=torch.long)], dim=1
    )
    tower_calls = []
    embeddings = model.model.vision_tower.embeddings
    hook = embeddings.register_forward_hook(lambda *args: tower_calls.append(1))
    cached = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        past_key_values=first.past_key_values,
        **GENERATE,
        return_dict_in_generate=True,
        output_logits=True,
    )
    hook.remove()
    assert not tower_calls, "the second turn must not run the vision tower"

    image_inputs = {k: v for k, v in inputs.items() if k in ("pixel_values", "image_sizes")}
    fresh = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, **image_inputs, **GENERATE,
        return_dict_in_generate=True, output_logits=True,
    )
    torch.testing.assert_close(cached.logits[0], fresh.logits[0], atol=1e-4, rtol=1e-4)
    assert torch.equal(cached.sequences, fresh.sequences)


@pytest.mark.parametrize("tower", ["clip", "siglip"])
def test_vision_model_returns_zipped_tokens(tower):
    torch.manual_seed(0)
    model = (CLIPVisionModel if tower == "clip" else SiglipVisionModel)(vision_config(tower)).eval()
    pixel_values = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    expected_tokens, expected_idx = published_zip(model, pixel_values, has_cls=tower == "clip")
    handle = apply_visionzip(model, dominant=DOMINANT, contextual=CONTEXTUAL)
    with torch.no_grad():
        output = model(pixel_values)
        as_tuple = model(pixel_values, return_dict=False)
    assert output.last_hidden_state.shape == (3, TOKENS, 32)
    assert output.pooler_output is None
    assert torch.equal(output.dominant_idx, expected_idx)
    torch.testing.assert_close(output.last_hidden_state, expected_tokens, atol=1e-5, rtol=1e-5)
    assert torch.equal(as_tuple[0], output.last_hidden_state)
    with pytest.raises(ValueError, match="output_hidden_states"):
        model(pixel_values, output_hidden_states=True)
    handle.remove()


def test_encoder_keeps_sdpa_and_skips_its_last_layer(monkeypatch):
    def no_eager(*args, **kwargs):
        raise AssertionError("eager attention was used")

    monkeypatch.setattr(modeling_clip, "eager_attention_forward", no_eager)
    monkeypatch.setattr(modeling_siglip, "eager_attention_forward", no_eager)
    llava, processor = make_llava(), make_llava_processor()
    siglip = SiglipVisionModel(vision_config("siglip")).eval()
    last_layer_calls = []
    for tower in (llava.model.vision_tower, siglip):
        tower.encoder.layers[-1].register_forward_hook(lambda *args: last_layer_calls.append(1))
    apply_visionzip(llava, processor, dominant=DOMINANT, contextual=CONTEXTUAL)
    apply_visionzip(siglip, dominant=DOMINANT, contextual=CONTEXTUAL)
    with torch.no_grad():
        llava.generate(**make_inputs(processor, "3-images"), **GENERATE)
        siglip(torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE))
    assert not last_layer_calls
    assert llava.config.vision_config._attn_implementation == "sdpa"
    assert siglip.config._attn_implementation == "sdpa"


def model_outputs(model, inputs):
    with torch.no_grad():
        output = model(**inputs)
    return output.logits if hasattr(output, "logits") else output.last_hidden_state, output


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_remove_restores_model_and_processor_exactly(family):
    model = make_llava() if family == "llava" else make_llava_next()
    processor = make_llava_processor() if family == "llava" else make_llava_next_processor()
    inputs_before = make_inputs(processor, "3-images")
    logits_before, _ = model_outputs(model, inputs_before)
    attributes = (set(vars(model)), set(vars(model.model)), set(vars(processor)))

    handle = apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL)
    assert isinstance(handle, VisionZipHandle) and handle.active
    model.generate(**make_inputs(processor, "3-images"), **GENERATE)
    handle.remove()
    handle.remove()

    assert not handle.active
    assert (set(vars(model)), set(vars(model.model)), set(vars(processor))) == attributes
    inputs_after = make_inputs(processor, "3-images")
    assert inputs_after.keys() == inputs_before.keys()
    for key in inputs_before:
        assert torch.equal(inputs_after[key], inputs_before[key]), key
    logits_after, _ = model_outputs(model, inputs_after)
    assert torch.equal(logits_after, logits_before)


def test_remove_restores_a_vision_model_exactly():
    torch.manual_seed(0)
    model = CLIPVisionModel(vision_config("clip")).eval()
    pixel_values = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    _, before = model_outputs(model, {"pixel_values": pixel_values})
    with apply_visionzip(model, dominant=DOMINANT, contextual=CONTEXTUAL) as handle:
        assert model(pixel_values).last_hidden_state.shape[1] == TOKENS
    assert not handle.active and "forward" not in vars(model)
    _, after = model_outputs(model, {"pixel_values": pixel_values})
    assert torch.equal(after.last_hidden_state, before.last_hidden_state)
    assert torch.equal(after.pooler_output, before.pooler_output)


def test_a_deep_copy_of_a_patched_model_zips_with_its_own_weights():
    torch.manual_seed(0)
    model = CLIPVisionModel(vision_config("clip")).eval()
    apply_visionzip(model, dominant=DOMINANT, contextual=CONTEXTUAL)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.encoder.layers[0].mlp.fc2.bias.add_(1.0)
        pixel_values = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
        cloned_tokens = clone(pixel_values).last_hidden_state
        assert not torch.equal(cloned_tokens, model(pixel_values).last_hidden_state)


# ----------------------------------------------------------------------------- errors


def test_unsupported_models_are_refused():
    torch.manual_seed(0)
    config = CLIPTextConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4
    )
    text_model = CLIPTextModel(config)
    with pytest.raises(TypeError, match="`model` must be one of"):
        apply_visionzip(text_model)


@pytest.mark.parametrize(
    "dominant, contextual, message",
    [
        (15, 3, "more than the 17 tokens"),
        (0, 3, "`dominant` must be >= 1"),
        (5, -1, "`contextual` must be >= 0"),
    ],
)
def test_budgets_the_encoder_cannot_meet_are_refused(dominant, contextual, message):
    model = make_llava()
    with pytest.raises(ValueError, match=message):
        apply_visionzip(model, dominant=dominant, contextual=contextual)
    assert "get_image_features" not in vars(model.model)


def test_a_fraction_on_a_llava_model_names_the_qwen_unit_and_the_count():
    model = make_llava()
    with pytest.raises(TypeError, match=r"Qwen2.5-VL and Qwen3-VL unit.* 17 tokens per image: dominant=0.5 of them is dominant=8"):
        apply_visionzip(model, dominant=0.5)
    with pytest.raises(TypeError, match=r"`contextual` must be an int.*contextual=0.25 of them is contextual=4"):
        apply_visionzip(model, contextual=0.25)
    assert "get_image_features" not in vars(model.model)


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_a_prompt_for_the_full_token_count_names_the_processor(family):
    """apply_visionzip without the processor, then the stock processor's prompt: the error says
    what VisionZip changed and that the processor writes the reduced count."""
    model = make_llava() if family == "llava" else make_llava_next()
    processor = make_llava_processor() if family == "llava" else make_llava_next_processor()
    with apply_visionzip(model, dominant=DOMINANT, contextual=CONTEXTUAL):
        with pytest.raises(ValueError, match=r"VisionZip: .* dominant \+ contextual = 8 tokens.*apply_visionzip\(model, processor"):
            model.generate(**make_inputs(processor, "1-image"), **GENERATE)
    assert "get_placeholder_mask" not in vars(model.model)


def test_a_siglip_budget_counts_no_cls_token():
    model = SiglipVisionModel(vision_config("siglip"))
    with pytest.raises(ValueError, match="more than the 16 tokens"):
        apply_visionzip(model, dominant=14, contextual=3)


def test_other_feature_layers_are_refused():
    with pytest.raises(ValueError, match="vision_feature_layer"):
        apply_visionzip(
            make_llava(vision_feature_layer=-1), dominant=DOMINANT, contextual=CONTEXTUAL
        )


def test_a_mismatched_processor_is_refused_and_nothing_is_changed():
    model = make_llava()
    with pytest.raises(TypeError, match="LlavaProcessor"):
        apply_visionzip(
            model, make_llava_next_processor(), dominant=DOMINANT, contextual=CONTEXTUAL
        )
    assert "get_image_features" not in vars(model.model)
    with pytest.raises(TypeError, match="processor=None"):
        vision_model = CLIPVisionModel(vision_config("clip"))
        apply_visionzip(vision_model, make_llava_processor(), dominant=DOMINANT)


def test_applying_twice_is_refused():
    model, processor = make_llava(), make_llava_processor()
    handle = apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL)
    with pytest.raises(ValueError, match="already"):
        apply_visionzip(model, dominant=DOMINANT, contextual=CONTEXTUAL)
    other = make_llava(seed=1)
    with pytest.raises(ValueError, match="already"):
        apply_visionzip(other, processor, dominant=DOMINANT, contextual=CONTEXTUAL)
    assert "get_image_features" not in vars(other.model), "a failed apply changes nothing"
    handle.remove()
    apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL).remove()


def test_a_backend_that_cannot_run_on_the_model_device_is_refused():
    model = make_llava()
    with pytest.raises(ValueError, match="backend='cuda' cannot run on the model's device \\(cpu\\)"):
        apply_visionzip(model, dominant=DOMINANT, contextual=CONTEXTUAL, backend="cuda")
    assert "get_image_features" not in vars(model.model)
    with pytest.raises(ValueError, match="`backend` must be one of"):
        apply_visionzip(model, dominant=DOMINANT, contextual=CONTEXTUAL, backend="fast")


def test_entering_a_removed_handle_is_refused():
    model = CLIPVisionModel(vision_config("clip")).eval()
    handle = apply_visionzip(model, dominant=DOMINANT, contextual=CONTEXTUAL)
    assert (handle.budget.dominant, handle.budget.contextual, handle.budget.tokens) == (DOMINANT, CONTEXTUAL, TOKENS)
    handle.remove()
    with pytest.raises(RuntimeError, match="this handle was removed"):
        with handle:
            pass
    assert "forward" not in vars(model)


def test_the_language_model_options_pass_through_a_llava_model():
    """output_hidden_states / output_attentions ask the language model for its own; VisionZip
    leaves them to it."""
    model, processor = make_llava(), make_llava_processor()
    apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL)
    inputs = make_inputs(processor, "3-images")
    with torch.no_grad():
        plain = model(**inputs)
        detailed = model(**inputs, output_hidden_states=True, output_attentions=True)
    assert len(detailed.hidden_states) == model.config.text_config.num_hidden_layers + 1
    assert detailed.hidden_states[0].shape[1] == inputs["input_ids"].shape[1]
    torch.testing.assert_close(detailed.logits, plain.logits)
