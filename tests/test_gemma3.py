"""``apply_visionzip`` on a tiny random Gemma 3 (``visionzip_kernels.testing.gemma``, no download).

The tower gives 8 x 8 = 64 patches, the projector pools them 2 x 2 into 16 soft tokens per image;
the budget is 5 dominant + 3 contextual soft tokens per image and per pan-and-scan crop. The
reference (``eager_visionzip``) is written here, independently of the package: an eager run of a
copy of the unpatched model with ``output_attentions=True``, the column means of the last layer's
attention map, 2 x 2 block means, and the reference ``zip_tokens`` on the stock features.
"""
from __future__ import annotations

import copy
import functools

import pytest
import torch

from gemma_checks import (
    GENERATE,
    check_cuda_run_keeps_the_cpu_tokens,
    check_remove_restores_exactly,
    check_second_turn_continues_the_cache,
    language_model_image_rows,
)
from visionzip_kernels import zip_tokens
from visionzip_kernels.integrations import apply_visionzip
from visionzip_kernels.testing.gemma import (
    GEMMA3_TOKENS,
    SOFT_ID,
    gemma3_model,
    gemma3_processor,
)
from visionzip_kernels.testing.onevision import make_images

DOMINANT, CONTEXTUAL = 5, 3
TOKENS = DOMINANT + CONTEXTUAL
PAN_AND_SCAN = dict(do_pan_and_scan=True, pan_and_scan_min_crop_size=8)
IMAGE = "<start_of_image>"
# name -> (prompts, image sizes per prompt, images (and crops) per prompt with pan-and-scan)
BATCHES = {
    "1-image": (["user " + IMAGE + " describe the image ?"], [[(40, 100)]], [1 + 3]),
    "2-images": (
        ["user " + IMAGE + " describe the image ?", "user " + IMAGE + " more ?"],
        [[(64, 64)], [(90, 30)]],
        [1, 1 + 3],
    ),
    "3-images": (
        ["user " + IMAGE + " describe the image ?", "user " + IMAGE + " and " + IMAGE + " compare them ?"],
        [[(40, 100)], [(64, 64), (90, 30)]],
        [1 + 3, 1 + 1 + 3],
    ),
}


def make_inputs(processor, batch: str, pan_and_scan: bool = False):
    prompts, sizes, _ = BATCHES[batch]
    images = [make_images(prompt_sizes, seed=10 * i) for i, prompt_sizes in enumerate(sizes)]
    options = PAN_AND_SCAN if pan_and_scan else {}
    return processor(text=prompts, images=images, return_tensors="pt", padding=True, **options)


def soft_tokens(inputs) -> list[int]:
    return (inputs["input_ids"] == SOFT_ID).sum(dim=1).tolist()


def eager_visionzip(model, pixel_values: torch.Tensor):
    """VisionZip written out on an eager run of an unpatched copy of ``model``: ``(tokens [n,
    TOKENS, D_text], dominant_idx [n, DOMINANT])``."""
    eager = copy.deepcopy(model).model
    eager.vision_tower.set_attn_implementation("eager")
    keys = {}
    last = eager.vision_tower.encoder.layers[-1].self_attn
    hook = last.k_proj.register_forward_hook(lambda module, args, output: keys.setdefault("k", output))
    with torch.no_grad():
        tower = eager.vision_tower(pixel_values, output_attentions=True)
        features = type(eager).get_image_features(eager, pixel_values).pooler_output
    hook.remove()
    attention = tower.attentions[-1]  # [n, H, 64, 64]
    n, heads, patches, _ = attention.shape
    side = int(patches**0.5)

    def blocks(x):  # [n, 64, C] -> [n, 16, C]: the mean of each 2 x 2 block of the 8 x 8 grid, raster order
        grid = x.reshape(n, side // 2, 2, side // 2, 2, -1)
        return grid.mean(dim=(2, 4)).reshape(n, (side // 2) ** 2, -1)

    received = attention.mean(dim=2).mean(dim=1)  # column mean over queries and heads: [n, 64]
    importance = blocks(received[..., None])[..., 0]
    head_keys = keys["k"].view(n, patches, heads, -1).mean(dim=2)
    return zip_tokens(features, importance, DOMINANT, CONTEXTUAL, blocks(head_keys), False, backend="reference")


@pytest.mark.parametrize("pan_and_scan", [False, True])
@pytest.mark.parametrize("batch", sorted(BATCHES))
def test_generate_writes_and_fills_the_reduced_placeholders(batch, pan_and_scan):
    model, processor = gemma3_model(), gemma3_processor()
    with apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL):
        inputs = make_inputs(processor, batch, pan_and_scan)
        output_ids = model.generate(**inputs, **GENERATE)
    _, sizes, with_crops = BATCHES[batch]
    blocks = with_crops if pan_and_scan else [len(prompt_sizes) for prompt_sizes in sizes]
    assert soft_tokens(inputs) == [TOKENS * count for count in blocks]
    assert inputs["pixel_values"].shape[0] == sum(blocks)
    prompt_length = inputs["input_ids"].shape[1]
    assert output_ids.shape == (len(blocks), prompt_length + 3)
    assert torch.equal(output_ids[:, :prompt_length], inputs["input_ids"])


@pytest.mark.parametrize("batch, pan_and_scan", [("3-images", False), ("3-images", True), ("1-image", True)])
def test_features_equal_the_ops_applied_to_an_eager_run(batch, pan_and_scan):
    model, processor = gemma3_model(), gemma3_processor()
    apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL)
    inputs = make_inputs(processor, batch, pan_and_scan)
    received = language_model_image_rows(model, inputs, SOFT_ID)
    assert model.model.vision_tower.config._attn_implementation == "sdpa", "the tower keeps SDPA"
    expected_tokens, expected_idx = eager_visionzip(model, inputs["pixel_values"])
    torch.testing.assert_close(received, expected_tokens.flatten(0, 1), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        output = model.model.get_image_features(inputs["pixel_values"])
    assert torch.equal(output.dominant_idx, expected_idx)


@pytest.mark.parametrize("pan_and_scan", [False, True])
def test_processor_counts_match_the_features(pan_and_scan):
    model, processor = gemma3_model(), gemma3_processor()
    apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL)
    inputs = make_inputs(processor, "3-images", pan_and_scan)
    with torch.no_grad():
        features = model.get_image_features(inputs["pixel_values"]).pooler_output
    assert features.shape == (inputs["pixel_values"].shape[0], TOKENS, model.config.text_config.hidden_size)
    assert sum(soft_tokens(inputs)) == features.shape[0] * features.shape[1]
    served = processor._get_num_multimodal_tokens(image_sizes=[(40, 100), (64, 64)])
    assert served.num_image_tokens == [features.shape[1]] * 2


def test_second_turn_continues_the_cache_without_pixels():
    model, processor = gemma3_model(), gemma3_processor()
    apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL)
    inputs = make_inputs(processor, "2-images")
    check_second_turn_continues_the_cache(model, processor, inputs, "token_type_ids", ("pixel_values",))



@pytest.mark.cuda
def test_cuda_run_keeps_the_cpu_tokens(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    check_cuda_run_keeps_the_cpu_tokens(
        gemma3_model,
        gemma3_processor,
        functools.partial(make_inputs, batch="3-images", pan_and_scan=True),
        dict(dominant=DOMINANT, contextual=CONTEXTUAL),
        ("pixel_values",),
        lambda output: output.dominant_idx.tolist(),
    )

def test_remove_restores_model_and_processor_exactly():
    budget = dict(dominant=DOMINANT, contextual=CONTEXTUAL)
    inputs = functools.partial(make_inputs, batch="3-images", pan_and_scan=True)
    check_remove_restores_exactly(gemma3_model(), gemma3_processor(), inputs, budget, [(40, 100)])


def test_the_default_budget_is_108_plus_20_soft_tokens():
    """Half of a real Gemma 3's 256 soft tokens; more than the tiny model's 16, hence the error."""
    with pytest.raises(ValueError, match=r"108 \+ 20 = 128 is more than the 16 tokens"):
        apply_visionzip(gemma3_model(), gemma3_processor())


@pytest.mark.parametrize(
    "dominant, contextual, error, message",
    [
        (GEMMA3_TOKENS, 1, ValueError, f"more than the {GEMMA3_TOKENS} tokens Gemma 3 gives each image"),
        (0, 3, ValueError, "`dominant` must be >= 1"),
        (5, -1, ValueError, "`contextual` must be >= 0"),
        (0.5, 3, TypeError, "dominant"),
    ],
)
def test_budgets_that_cannot_be_met_are_refused_and_nothing_is_changed(dominant, contextual, error, message):
    model, processor = gemma3_model(), gemma3_processor()
    with pytest.raises(error, match=message):
        apply_visionzip(model, processor, dominant=dominant, contextual=contextual)
    assert "get_image_features" not in vars(model.model)
    assert "replace_image_token" not in vars(processor)


@pytest.mark.parametrize(
    "attribute, value, message",
    [("image_seq_length", 8, "soft tokens per image"), ("image_token_id", SOFT_ID, "begin-of-image token id")],
)
def test_a_processor_of_another_model_is_refused_and_nothing_is_changed(attribute, value, message):
    model, processor = gemma3_model(), gemma3_processor()
    setattr(processor, attribute, value)
    with pytest.raises(ValueError, match=message):
        apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL)
    assert "get_image_features" not in vars(model.model)


def test_misuse_is_refused():
    model, processor = gemma3_model(), gemma3_processor()
    with pytest.raises(TypeError, match="must be a Gemma3Processor"):
        apply_visionzip(model, processor.tokenizer, dominant=DOMINANT, contextual=CONTEXTUAL)
    with pytest.raises(ValueError, match="cuda_graphs"):
        apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL, cuda_graphs=True)
    apply_visionzip(model.model, processor, dominant=DOMINANT, contextual=CONTEXTUAL)
    with pytest.raises(ValueError, match="already"):
        apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL)
