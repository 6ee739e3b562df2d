"""``apply_visionzip`` on a tiny random Gemma 4 (``visionzip_kernels.testing.gemma``, no download).

Images of 40 x 100, 64 x 64 and 90 x 30 pixels become 65, 64 and 56 soft tokens (3 x 3 blocks of
4-pixel patches, at most 70 per image; patch sequences padded to 630 at position -1). The budget is
``dominant=0.5, contextual=0.1`` of each image's soft tokens unless a test says otherwise. The
reference (``eager_visionzip``) is written here, independently of the package: an eager run of a
copy of the unpatched model with ``output_attentions=True``, each image's real rows and columns of
the last layer's attention map, its keys rotated here, soft tokens found by position one by one,
and the reference ``zip_tokens_varlen`` on the stock features.
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
from visionzip_kernels import zip_tokens_varlen
from visionzip_kernels.integrations import apply_visionzip
from visionzip_kernels.testing.gemma import GEMMA4_IMAGE_ID as IMAGE_ID, gemma4_model, gemma4_processor
from visionzip_kernels.testing.onevision import make_images

DOMINANT, CONTEXTUAL = 0.5, 0.1
SOFT_TOKENS = {(40, 100): 65, (64, 64): 64, (90, 30): 56}
IMAGE = "<|image|>"
BATCHES = {
    "1-image": (["user " + IMAGE + " describe the image ?"], [[(40, 100)]]),
    "2-images": (["user " + IMAGE + " describe the image ?", "user " + IMAGE + " more ?"], [[(64, 64)], [(90, 30)]]),
    "3-images": (
        ["user " + IMAGE + " describe the image ?", "user " + IMAGE + " and " + IMAGE + " compare them ?"],
        [[(40, 100)], [(64, 64), (90, 30)]],
    ),
}


def kept(size: int, dominant=DOMINANT, contextual=CONTEXTUAL) -> int:
    """Soft tokens kept of ``size``: ``int(d T) + max(int(c T), 1)`` for fractions, else the counts."""
    if isinstance(dominant, int):
        return dominant + contextual
    return int(dominant * size) + max(int(contextual * size), 1)


def make_inputs(processor, batch: str):
    prompts, sizes = BATCHES[batch]
    images = [make_images(prompt_sizes, seed=10 * i) for i, prompt_sizes in enumerate(sizes)]
    return processor(text=prompts, images=images, return_tensors="pt", padding=True)


def soft_tokens(inputs) -> list[int]:
    return (inputs["input_ids"] == IMAGE_ID).sum(dim=1).tolist()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Gemma 4's 2-D rotary embedding of ``x`` ``[B, P, H, hd]``: the first half of the channels
    turned by the first half of the tables (one axis), the second half by the second."""
    halves = []
    for part, c, s in zip(x.chunk(2, dim=-1), cos.chunk(2, dim=-1), sin.chunk(2, dim=-1)):
        first, second = part.chunk(2, dim=-1)
        turned = torch.cat([-second, first], dim=-1)
        halves.append(part * c[:, :, None] + turned * s[:, :, None])
    return torch.cat(halves, dim=-1)


def eager_visionzip(model, pixel_values, positions, dominant=DOMINANT, contextual=CONTEXTUAL):
    """VisionZip written out on an eager run of an unpatched copy of ``model``: ``(kept tokens
    [K_total, D_text], kept indices per image)``."""
    eager = copy.deepcopy(model).model
    eager.vision_tower.set_attn_implementation("eager")
    attention = eager.vision_tower.encoder.layers[-1].self_attn
    call = {}
    hook = attention.register_forward_pre_hook(lambda m, args, kwargs: call.update(kwargs), with_kwargs=True)
    with torch.no_grad():
        maps = eager.vision_tower(pixel_values, positions, output_attentions=True).attentions[-1]
        features = torch.cat(type(eager).get_image_features(eager, pixel_values, positions).pooler_output)
        hidden = call["hidden_states"]
        batch, patches, _ = hidden.shape
        keys = attention.k_norm(attention.k_proj(hidden).view(batch, patches, -1, attention.head_dim))
    hook.remove()
    keys = rotate(keys, *call["position_embeddings"]).mean(dim=2)  # [B, P, hd], over key heads
    importance, soft_keys, sizes = [], [], []
    for image in range(batch):
        real = (positions[image] != -1).all(dim=-1)
        attention_map = maps[image][:, real][:, :, real]  # [H, n, n] among the real patches
        received = attention_map.sum(dim=1).mean(dim=0)
        x, y = positions[image][real].unbind(-1)
        columns = (int(x.max()) + 1) // 3
        soft = (y // 3) * columns + x // 3
        for token in range(int(soft.max()) + 1):
            importance.append(received[soft == token].mean())
            soft_keys.append(keys[image][real][soft == token].mean(dim=0))
        sizes.append(int(soft.max()) + 1)
    cu_seqlens = torch.tensor([0] + sizes).cumsum(0)
    tokens, kept_idx, cu_kept = zip_tokens_varlen(
        features, torch.stack(importance), cu_seqlens, dominant, contextual, torch.stack(soft_keys),
        backend="reference",
    )
    counts = (cu_kept[1:] - cu_kept[:-1]).tolist()
    return tokens, [idx - start for idx, start in zip(kept_idx.split(counts), cu_seqlens[:-1].tolist())]


@pytest.mark.parametrize("batch", sorted(BATCHES))
def test_generate_writes_and_fills_each_images_kept_count(batch):
    model, processor = gemma4_model(), gemma4_processor()
    with apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL):
        inputs = make_inputs(processor, batch)
        output_ids = model.generate(**inputs, **GENERATE)
    _, sizes = BATCHES[batch]
    assert soft_tokens(inputs) == [sum(kept(SOFT_TOKENS[s]) for s in prompt) for prompt in sizes]
    prompt_length = inputs["input_ids"].shape[1]
    assert output_ids.shape == (len(sizes), prompt_length + 3)
    assert torch.equal(output_ids[:, :prompt_length], inputs["input_ids"])


@pytest.mark.parametrize("batch, budget", [("3-images", (DOMINANT, CONTEXTUAL)), ("2-images", (20, 6))])
def test_features_equal_the_ops_applied_to_an_eager_run(batch, budget):
    model, processor = gemma4_model(), gemma4_processor()
    apply_visionzip(model, processor, dominant=budget[0], contextual=budget[1])
    inputs = make_inputs(processor, batch)
    received = language_model_image_rows(model, inputs, IMAGE_ID)
    assert model.model.vision_tower.config._attn_implementation == "sdpa", "the tower keeps SDPA"
    pixels, positions = inputs["pixel_values"], inputs["image_position_ids"]
    expected_tokens, expected_idx = eager_visionzip(model, pixels, positions, *budget)
    assert received.abs().sum(dim=-1).min() > 0, "every token must carry a signal the test can compare"
    torch.testing.assert_close(received, expected_tokens, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        output = model.model.get_image_features(pixels, positions)
    assert [idx.tolist() for idx in output.kept_idx] == [idx.tolist() for idx in expected_idx]


def test_processor_counts_match_the_features():
    model, processor = gemma4_model(), gemma4_processor()
    apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL)
    inputs = make_inputs(processor, "3-images")
    with torch.no_grad():
        features = model.get_image_features(inputs["pixel_values"], inputs["image_position_ids"]).pooler_output
    per_image = [len(tokens) for tokens in features]
    assert per_image == [kept(SOFT_TOKENS[size]) for size in [(40, 100), (64, 64), (90, 30)]]
    assert soft_tokens(inputs) == [per_image[0], per_image[1] + per_image[2]]
    served = processor._get_num_multimodal_tokens(image_sizes=[(40, 100), (64, 64), (90, 30)])
    assert served.num_image_tokens == per_image


def test_second_turn_continues_the_cache_without_pixels():
    model, processor = gemma4_model(), gemma4_processor()
    apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL)
    inputs = make_inputs(processor, "2-images")
    image_inputs = ("pixel_values", "image_position_ids")
    check_second_turn_continues_the_cache(model, processor, inputs, "mm_token_type_ids", image_inputs)



@pytest.mark.cuda
def test_cuda_run_keeps_the_cpu_tokens(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    check_cuda_run_keeps_the_cpu_tokens(
        gemma4_model,
        gemma4_processor,
        functools.partial(make_inputs, batch="3-images"),
        dict(dominant=DOMINANT, contextual=CONTEXTUAL),
        ("pixel_values", "image_position_ids"),
        lambda output: [idx.tolist() for idx in output.kept_idx],
    )

def test_remove_restores_model_and_processor_exactly():
    budget = dict(dominant=DOMINANT, contextual=CONTEXTUAL)
    inputs = functools.partial(make_inputs, batch="3-images")
    check_remove_restores_exactly(gemma4_model(), gemma4_processor(), inputs, budget, [(40, 100)])


def test_the_default_budget_keeps_0_42_plus_0_08_of_each_image():
    model, processor = gemma4_model(), gemma4_processor()
    apply_visionzip(model, processor)
    inputs = make_inputs(processor, "1-image")
    assert soft_tokens(inputs) == [kept(SOFT_TOKENS[(40, 100)], 0.42, 0.08)] == [27 + 5]


def test_budgets_that_cannot_be_met_are_refused():
    model, processor = gemma4_model(), gemma4_processor()
    with pytest.raises(ValueError, match="an image of 70 tokens cannot keep 60 dominant \\+ 11"):
        apply_visionzip(model, processor, dominant=60, contextual=11)
    assert "get_image_features" not in vars(model.model) and "replace_image_token" not in vars(processor)
    with pytest.raises(ValueError, match="`dominant`"):
        apply_visionzip(model, processor, dominant=1.5, contextual=0.1)
    apply_visionzip(model, processor, dominant=58, contextual=2)  # the 64 x 64 image holds it, the 90 x 30 not
    with pytest.raises(ValueError, match="an image of 56 tokens cannot keep 58 dominant"):
        make_inputs(processor, "2-images")


def test_misuse_is_refused_and_nothing_is_changed():
    model, processor = gemma4_model(), gemma4_processor()
    processor.image_token_id = IMAGE_ID - 1
    with pytest.raises(ValueError, match="image token id"):
        apply_visionzip(model, processor)
    assert "get_image_features" not in vars(model.model)
    with pytest.raises(TypeError, match="must be a Gemma4Processor"):
        apply_visionzip(model, processor.tokenizer)
    apply_visionzip(model.model)
    pixels = make_inputs(gemma4_processor(), "1-image")["pixel_values"]
    with pytest.raises(ValueError, match="`image_position_ids` is required"):
        model.model.get_image_features(pixels)
