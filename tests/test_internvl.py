"""``apply_visionzip`` on tiny random InternVL models (``internvl_models.py``).

Tiles of 64 pixels have 16 tokens (4 x 4 pixel-shuffled blocks of 2 x 2 patches); the three test
images have 1, 3 and 5 tiles. The reference (``eager_visionzip``) is written here, independently
of the package: an eager run of a copy of the unpatched model, the CLS row of the feature layer's
softmax map, each token's four patches written out by grid position, and the reference
``zip_tokens``.
"""
from __future__ import annotations

import copy

import pytest
import torch

from internvl_models import (
    BATCHES,
    GENERATE,
    IMAGE_ID,
    SIZES,
    TILE_TOKENS,
    TILES,
    make_inputs,
    make_model,
    make_processor,
)
from model_probes import instance_state, language_model_inputs
from visionzip_kernels import zip_tokens
from visionzip_kernels.integrations import apply_visionzip

DEFAULT_KEPT = 11  # int(0.65 * 16) + max(int(0.05 * 16), 1) = 10 + 1 per tile


def eager_visionzip(model, pixel_values, dominant: int, contextual: int):
    """``(tokens [tiles, K, D], dominant_idx)`` from an eager run of a copy of ``model``.

    The feature layer (``vision_feature_layer``) returns its softmax map ``[tiles, H, 1+N, 1+N]``;
    its keys are its ``k_proj`` of the layer's normed input. Token ``(i, j)`` of a tile's
    ``S/2 x S/2`` grid holds patches ``(2i + a, 2j + b)``, ``a, b`` in ``{0, 1}``: its importance is
    the mean of their CLS-row entries (per head), its key the mean of their keys.
    """
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    inner = eager.model
    layers = inner.vision_tower.encoder.layer
    attention = layers[inner.config.vision_feature_layer % (len(layers) + 1) - 1].attention
    seen = {}
    hooks = [
        attention.register_forward_pre_hook(lambda module, args: seen.update(normed=args[0])),
        attention.register_forward_hook(lambda module, args, output: seen.update(weights=output[1])),
    ]
    with torch.no_grad():
        features = type(inner).get_image_features(inner, pixel_values, return_dict=True).pooler_output
    for hook in hooks:
        hook.remove()
    tiles, heads = seen["weights"].shape[:2]
    side = int((seen["weights"].shape[-1] - 1) ** 0.5)
    cls_row = seen["weights"][:, :, 0, 1:].reshape(tiles, heads, side, side)
    keys = attention.k_proj(seen["normed"]).detach()[:, 1:]
    keys = keys.reshape(tiles, side, side, heads, -1).permute(0, 3, 1, 2, 4)  # [tiles, H, S, S, hd]
    half = side // 2
    importance = torch.zeros(tiles, heads, half * half)
    block_keys = torch.zeros(tiles, heads, half * half, keys.shape[-1])
    for i in range(half):
        for j in range(half):
            rows, cols = slice(2 * i, 2 * i + 2), slice(2 * j, 2 * j + 2)
            importance[:, :, i * half + j] = cls_row[:, :, rows, cols].float().mean(dim=(2, 3))
            block_keys[:, :, i * half + j] = keys[:, :, rows, cols].float().mean(dim=(2, 3))
    return zip_tokens(features, importance, dominant, contextual, block_keys, False, backend="reference")


# ----------------------------------------------------------------------------- features vs ops


@pytest.mark.parametrize(
    "layer, backend", [(-1, "auto"), (-1, "reference"), (-1, "triton"), (-2, "auto")]
)
def test_language_model_receives_the_zipped_tiles(layer, backend):
    model, processor = make_model(vision_feature_layer=layer), make_processor()
    stock = make_inputs(processor, "3-images")
    expected, expected_idx = eager_visionzip(model, stock["pixel_values"], 6, 2)
    apply_visionzip(model, processor, dominant=6, contextual=2, backend=backend)
    inputs = make_inputs(processor, "3-images")
    assert torch.equal(inputs["pixel_values"], stock["pixel_values"])

    received = language_model_inputs(model, inputs)
    image_mask = inputs["input_ids"] == IMAGE_ID
    torch.testing.assert_close(
        received["inputs_embeds"][image_mask], expected.flatten(0, 1), atol=1e-5, rtol=1e-5
    )
    with torch.no_grad():
        output = model.model.get_image_features(inputs["pixel_values"])
    assert torch.equal(output.dominant_idx, expected_idx)
    assert output.pooler_output.shape == (sum(TILES), 8, 32)


# ----------------------------------------------------------------------------- generate


@pytest.mark.parametrize("batch", sorted(BATCHES))
def test_generate_encodes_once_and_matches_the_forward_pass(batch):
    model, processor = make_model(), make_processor()
    stock = make_inputs(processor, batch)
    apply_visionzip(model, processor)
    inputs = make_inputs(processor, batch)
    _, which = BATCHES[batch]
    tiles = sum(TILES[i] for i in which)
    assert int((inputs["input_ids"] == IMAGE_ID).sum()) == DEFAULT_KEPT * tiles
    assert int((stock["input_ids"] == IMAGE_ID).sum()) == TILE_TOKENS * tiles
    encoder_runs = []
    hook = model.model.vision_tower.register_forward_hook(lambda *args: encoder_runs.append(1))
    generated = model.generate(**inputs, **GENERATE, return_dict_in_generate=True, output_logits=True)
    hook.remove()
    assert len(encoder_runs) == 1, "generate must run the encoder once"
    length = inputs["input_ids"].shape[1]
    assert generated.sequences.shape == (inputs["input_ids"].shape[0], length + 3)
    forward_logits = language_model_inputs(model, inputs)["logits"][:, -1]
    torch.testing.assert_close(generated.logits[0], forward_logits, atol=1e-5, rtol=1e-5)


def test_second_turn_continues_the_cache_without_pixels():
    model, processor = make_model(), make_processor()
    apply_visionzip(model, processor)
    inputs = make_inputs(processor, "2-images")
    first = model.generate(**inputs, **GENERATE, return_dict_in_generate=True)

    follow_up = processor.tokenizer(
        ["user: more please ? assistant:"] * 2, add_special_tokens=False, return_tensors="pt"
    )
    input_ids = torch.cat([first.sequences, follow_up["input_ids"]], dim=1)
    added = input_ids.shape[1] - inputs["input_ids"].shape[1]
    attention_mask = torch.cat([inputs["attention_mask"], torch.ones(2, added, dtype=torch.long)], dim=1)
    encoder_runs = []
    hook = model.model.vision_tower.register_forward_hook(lambda *args: encoder_runs.append(1))
    cached = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        cache=first.cache,
        **GENERATE,
        return_dict_in_generate=True,
        output_logits=True,
    )
    hook.remove()
    assert not encoder_runs, "the second turn must not run the encoder"
    fresh = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pixel_values=inputs["pixel_values"],
        **GENERATE,
        return_dict_in_generate=True,
        output_logits=True,
    )
    torch.testing.assert_close(cached.logits[0], fresh.logits[0], atol=1e-4, rtol=1e-4)
    assert torch.equal(cached.sequences, fresh.sequences)


def test_remove_restores_the_model_and_processor_exactly():
    model, processor = make_model(), make_processor()
    inputs = make_inputs(processor, "3-images")
    before = model.generate(**inputs, **GENERATE, return_dict_in_generate=True, output_logits=True)
    model_state = instance_state(model)
    processor_state = dict(vars(processor))
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    handle = apply_visionzip(model, processor, dominant=5, contextual=1)
    model.generate(**make_inputs(processor, "3-images"), **GENERATE)
    handle.remove()

    assert instance_state(model) == model_state
    assert dict(vars(processor)) == processor_state
    assert all(torch.equal(weights[name], tensor) for name, tensor in model.state_dict().items())
    again = make_inputs(processor, "3-images")
    assert torch.equal(again["input_ids"], inputs["input_ids"])
    after = model.generate(**again, **GENERATE, return_dict_in_generate=True, output_logits=True)
    assert torch.equal(after.sequences, before.sequences)
    assert all(torch.equal(a, b) for a, b in zip(after.logits, before.logits))


def test_encoder_keeps_its_attention_implementation(monkeypatch):
    model, processor = make_model(), make_processor()
    module = __import__(type(model).__module__, fromlist=["eager_attention_forward"])

    def no_eager(*args, **kwargs):
        raise AssertionError("eager attention was used")

    monkeypatch.setattr(module, "eager_attention_forward", no_eager)
    apply_visionzip(model, processor)
    model.generate(**make_inputs(processor, "3-images"), **GENERATE)
    assert model.config.vision_config._attn_implementation == "sdpa"


# ----------------------------------------------------------------------------- processor and budgets


def test_processor_counts_match_the_features():
    model, processor = make_model(), make_processor()
    apply_visionzip(model, processor, dominant=4, contextual=1)
    inputs = make_inputs(processor, "3-images")
    with torch.no_grad():
        output = model.model.get_image_features(inputs["pixel_values"])
    assert output.pooler_output.shape[:2] == (sum(TILES), 5)
    assert (inputs["input_ids"] == IMAGE_ID).sum(dim=1).tolist() == [5 * TILES[0], 5 * (TILES[1] + TILES[2])]
    counts = processor._get_num_multimodal_tokens(image_sizes=SIZES)
    assert counts.num_image_tokens == [5 * tiles for tiles in TILES]


def test_budgets_per_tile_and_the_inner_model():
    model = make_model()
    assert apply_visionzip(model).budget.tokens == DEFAULT_KEPT
    inner, processor = make_model().model, make_processor()
    handle = apply_visionzip(inner, processor, dominant=0.5, contextual=3)
    assert (handle.budget.dominant, handle.budget.contextual) == (8, 3)
    inputs = make_inputs(processor, "1-image")
    with torch.no_grad():
        output = inner(**inputs)
    assert output.image_outputs.pooler_output.shape[:2] == (TILES[0], 11)


# ----------------------------------------------------------------------------- errors


def test_bad_budgets_layers_and_processors_are_refused():
    model, processor = make_model(), make_processor()
    with pytest.raises(TypeError, match="dominant"):
        apply_visionzip(model, processor, dominant="half")
    with pytest.raises(ValueError, match="cannot keep"):
        apply_visionzip(model, processor, dominant=15, contextual=2)
    with pytest.raises(ValueError, match="at least one token"):
        apply_visionzip(model, processor, dominant=0, contextual=3)
    with pytest.raises(ValueError, match="backend"):
        apply_visionzip(model, processor, backend="nonexistent")
    with pytest.raises(ValueError, match="cuda_graphs"):
        apply_visionzip(model, processor, cuda_graphs=True)
    with pytest.raises(TypeError, match="InternVLProcessor"):
        apply_visionzip(model, object())
    other_tiles = make_processor()
    other_tiles.image_seq_length = 64
    with pytest.raises(ValueError, match="image_seq_length"):
        apply_visionzip(model, other_tiles)
    for layers in ([-1, -2], 3):
        with pytest.raises(ValueError, match="vision_feature_layer|layers"):
            apply_visionzip(make_model(vision_feature_layer=layers), processor)
    with pytest.raises(ValueError, match="vision_feature_select_strategy"):
        apply_visionzip(make_model(vision_feature_select_strategy="full"), processor)
    assert "get_image_features" not in vars(model.model), "a refused call changes nothing"
    assert processor.image_seq_length == TILE_TOKENS
    handle = apply_visionzip(model, processor)
    with pytest.raises(ValueError, match="already"):
        apply_visionzip(model, make_processor())
    with pytest.raises(ValueError, match="already"):
        apply_visionzip(make_model(), processor)
    handle.remove()


# ----------------------------------------------------------------------------- GPU


@pytest.mark.cuda
def test_cuda_run_keeps_the_cpu_tokens(monkeypatch):
    """On a GPU (``"auto"``: the CUDA or Triton backends) the kept tokens are the CPU run's;
    features and the first logits agree within float32 rounding of the two devices (TF32 off)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model, processor = make_model(), make_processor()
    apply_visionzip(model, processor)
    inputs = make_inputs(processor, "3-images")
    with torch.no_grad():
        cpu = model.model.get_image_features(inputs["pixel_values"])
    cpu_generated = model.generate(**inputs, **GENERATE, return_dict_in_generate=True, output_logits=True)

    cuda_model = make_model().cuda()
    apply_visionzip(cuda_model)
    cuda_inputs = {name: tensor.cuda() for name, tensor in inputs.items()}
    with torch.no_grad():
        gpu = cuda_model.model.get_image_features(cuda_inputs["pixel_values"])
    assert torch.equal(gpu.dominant_idx.cpu(), cpu.dominant_idx)
    torch.testing.assert_close(gpu.pooler_output.cpu(), cpu.pooler_output, atol=1e-4, rtol=1e-4)
    gpu_generated = cuda_model.generate(
        **cuda_inputs, **GENERATE, return_dict_in_generate=True, output_logits=True
    )
    torch.testing.assert_close(
        gpu_generated.logits[0].cpu(), cpu_generated.logits[0], atol=1e-4, rtol=1e-4
    )
