"""``apply_visionzip`` on tiny random Qwen2.5-VL, Qwen3-VL and Qwen3.5 (dense, MoE) models, and parity
with the published port.

Models, processors and images come from ``qwen_vl_models.py``; the budget is the published
``dominant=0.65, contextual=0.05`` unless a test says otherwise (6, 12, 16 merged tokens per image
keep 3 + 1, 7 + 1, 10 + 1). References are written here, independently of the package: the
published statistic from an eager run of the same model (``eager_visionzip``), positions written
out token by token (``reference_positions``).
"""
from __future__ import annotations

import copy
import pathlib

import numpy as np
import pytest
import torch
from transformers.vision_utils import get_vision_window_index

from model_probes import instance_state, language_model_inputs
from qwen_vl_models import (
    BATCHES,
    GENERATE,
    IMAGE_ID,
    MERGE,
    MERGED_TOKENS,
    language_model_inputs,
    make_images,
    make_inputs,
    make_model,
    make_processor,
)
from visionzip_kernels import zip_tokens_varlen
from visionzip_kernels.integrations import apply_visionzip
from visionzip_kernels.integrations.budget import Budget
from visionzip_kernels.integrations.qwen_vl import LastBlockAttention, zip_images
from visionzip_kernels.integrations.qwen_vl_positions import kept_rope_index

FAMILIES = ["qwen2_5_vl", "qwen3_vl", "qwen3_5", "qwen3_5_moe"]
GOLDEN = pathlib.Path(__file__).parent / "data" / "published_qwen25vl_visionzip.npz"
GOLDEN_CASES = ["grid14x14", "grid20x28", "odd"]
KEPT = {6: 4, 12: 8, 16: 11}  # merged tokens -> kept at 0.65 + 0.05


# ----------------------------------------------------------------------------- references


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def eager_visionzip(model, inputs, dominant=0.65, contextual=0.05):
    """The published statistic and merge, per image, on an eager run of a copy of ``model``.

    Runs the unpatched encoder with eager attention, reads the last block's input and rotary
    tables, projects and rotates its queries and keys here, computes each image's dense softmax
    ``[H, N_i, N_i]``, sums over queries, averages over heads and over each merge unit (putting
    Qwen2.5-VL's window order back to raster), pools the keys the same way, and zips the merged
    features (and deepstack features) with the reference ``zip_tokens_varlen``. Returns
    ``(features per image, deepstack per layer per image, kept_idx per image)``.
    """
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    inner = eager.model
    attention = inner.visual.blocks[-1].attn
    seen = {}
    hook = attention.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(hidden=args[0], rope=kwargs["position_embeddings"]),
        with_kwargs=True,
    )
    grid = inputs["image_grid_thw"]
    with torch.no_grad():
        output = type(inner).get_image_features(inner, inputs["pixel_values"], grid, return_dict=True)
    hook.remove()
    heads = attention.num_heads
    qkv = attention.qkv(seen["hidden"]).detach().float()
    query, key, _ = qkv.reshape(qkv.shape[0], 3, heads, -1).unbind(1)
    cos, sin = (table.float().unsqueeze(-2) for table in seen["rope"])
    query, key = query * cos + rotate_half(query) * sin, key * cos + rotate_half(key) * sin
    patches = [t * h * w for t, h, w in grid.tolist()]
    received = []
    for q, k in zip(query.split(patches), key.split(patches)):
        scores = torch.einsum("nhd,mhd->hnm", q, k) * attention.scaling
        received.append(scores.softmax(dim=-1).sum(dim=1).mean(dim=0))
    received = torch.cat(received)
    if hasattr(inner.visual, "window_size"):
        window_index, _ = get_vision_window_index(
            grid, inner.visual.spatial_merge_size, inner.visual.window_size, inner.visual.patch_size
        )
        raster = torch.argsort(window_index)
    else:
        raster = torch.arange(sum(patches) // MERGE**2)
    importance = received.view(-1, MERGE**2).mean(dim=1)[raster]
    keys = key.view(-1, MERGE**2, heads, key.shape[-1]).mean(dim=1)[raster].mean(dim=1)
    merged = torch.cat(output.pooler_output)
    deepstack = [torch.cat(layer) for layer in getattr(output, "deepstack_features", None) or []]
    sizes = [size // MERGE**2 for size in patches]
    cu = torch.tensor(np.concatenate([[0], np.cumsum(sizes)]))
    results = [
        zip_tokens_varlen(features, importance, cu, dominant, contextual, keys, backend="reference")
        for features in [merged, *deepstack]
    ]
    starts = cu[:-1].tolist()
    counts = [int(n) for n in (results[0][2][1:] - results[0][2][:-1]).tolist()]
    kept_idx = [idx - start for idx, start in zip(results[0][1].split(counts), starts)]
    per_image = [tokens.split(counts) for tokens, _, _ in results]
    return per_image[0], per_image[1:], kept_idx


def reference_positions(input_ids, attention_mask, grids, kept_idx):
    """M-RoPE positions ``[3, B, L]`` written out token by token: text counts up from the last
    position; an image of ``h x w`` merged tokens starting at ``p`` gives its kept token ``r`` the
    position ``(p, p + r // w, p + r % w)``, and the text after it starts at ``p + max(h, w)``.
    Padding gets 0."""
    positions = torch.zeros(3, *input_ids.shape, dtype=torch.long)
    image = 0
    for row in range(input_ids.shape[0]):
        next_position, column = 0, 0
        ids = input_ids[row].tolist()
        while column < len(ids):
            if not attention_mask[row, column]:
                column += 1
                continue
            if ids[column] != IMAGE_ID:
                positions[:, row, column] = next_position
                next_position += 1
                column += 1
                continue
            _, h, w = (int(v) // s for v, s in zip(grids[image], (1, MERGE, MERGE)))
            for r in kept_idx[image]:
                position = [next_position, next_position + r // w, next_position + r % w]
                positions[:, row, column] = torch.tensor(position)
                column += 1
            next_position += max(h, w)
            image += 1
    return positions


# ----------------------------------------------------------------------------- golden parity


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_published_qwen25vl_outputs(case):
    """The integration's zip (``zip_images``) and positions (``kept_rope_index``) on the published
    port's inputs: kept mask, output embeddings, position ids, attention mask. (The op-level parity
    of scores, pooled keys and kept mask is ``test_golden_qwen25vl.py``.)"""
    golden = {
        name.split("/")[1]: torch.from_numpy(value)
        for name, value in np.load(GOLDEN).items()
        if name.startswith(case + "/")
    }
    tokens, heads, head_dim, width, prefix, suffix, image_id = golden["meta"].tolist()
    attention = LastBlockAttention(
        golden["q"].transpose(0, 1), golden["k"].transpose(0, 1), head_dim**-0.5
    )
    image_rows = golden["inputs_embeds"][0, prefix : prefix + tokens]
    budget = Budget(0.65, 0.05)
    zipped = zip_images(attention, image_rows, [], [4 * tokens], 4, golden["window_index"], budget)

    (kept_idx,) = zipped.kept_idx
    kept_mask = torch.ones(golden["input_ids"].shape[1], dtype=torch.bool)
    kept_mask[prefix : prefix + tokens] = False
    kept_mask[prefix + kept_idx] = True
    assert torch.equal(kept_mask, golden["kept_mask"])

    embeds = golden["inputs_embeds"][0]
    out_embeds = torch.cat([embeds[:prefix], zipped.features[0], embeds[prefix + tokens :]])
    torch.testing.assert_close(out_embeds, golden["out_inputs_embeds"][0], atol=1e-5, rtol=1e-5)

    reduced_ids = golden["input_ids"][:, kept_mask]
    reduced_mask = torch.ones_like(reduced_ids)
    assert torch.equal(reduced_mask, golden["out_attention_mask"])

    def published_rope_index(input_ids, mm_token_type_ids, image_grid_thw, attention_mask):
        assert torch.equal(input_ids, golden["input_ids"]), "the image run is expanded back in place"
        assert torch.equal(mm_token_type_ids, (input_ids == image_id).long())
        return golden["position_ids"], None

    positions, delta = kept_rope_index(
        published_rope_index,
        reduced_ids,
        (reduced_ids == image_id).long(),
        torch.tensor([[1, 2, 2 * tokens]]),
        [kept_idx.tolist()],
        merge_size=2,
        attention_mask=reduced_mask,
    )
    assert torch.equal(positions, golden["out_position_ids"])
    assert int(delta) == int(golden["out_position_ids"].max()) + 1 - reduced_ids.shape[1]


# ----------------------------------------------------------------------------- integration


@pytest.mark.parametrize("backend", ["auto", "triton", "reference"])
@pytest.mark.parametrize("family", FAMILIES)
def test_language_model_receives_the_published_features_per_image(family, backend):
    model, processor = make_model(family), make_processor(family)
    inputs = make_inputs(family, processor, "3-images")
    apply_visionzip(model, processor, backend=backend)
    reduced = make_inputs(family, processor, "3-images")
    expected, expected_deepstack, expected_idx = eager_visionzip(model, inputs)

    received = language_model_inputs(model, reduced)
    image_mask = reduced["input_ids"] == IMAGE_ID
    torch.testing.assert_close(
        received["inputs_embeds"][image_mask], torch.cat(expected), atol=1e-5, rtol=1e-5
    )
    with torch.no_grad():
        output = model.model.get_image_features(reduced["pixel_values"], reduced["image_grid_thw"])
    assert [idx.tolist() for idx in output.kept_idx] == [idx.tolist() for idx in expected_idx]
    assert [len(idx) for idx in output.kept_idx] == [KEPT[n] for n in MERGED_TOKENS]
    if family == "qwen3_vl":
        assert len(expected_deepstack) == 2
        for layer, expected_layer in zip(received["deepstack_visual_embeds"], expected_deepstack):
            torch.testing.assert_close(layer, torch.cat(expected_layer), atol=1e-5, rtol=1e-5)
        assert torch.equal(received["visual_pos_masks"], image_mask)


@pytest.mark.parametrize("family", FAMILIES)
def test_positions_are_the_kept_tokens_original_positions(family):
    model, processor = make_model(family), make_processor(family)
    apply_visionzip(model, processor)
    inputs = make_inputs(family, processor, "3-images")
    received = language_model_inputs(model, inputs)
    with torch.no_grad():
        kept_idx = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).kept_idx
    kept_lists = [idx.tolist() for idx in kept_idx]
    expected = reference_positions(
        inputs["input_ids"], inputs["attention_mask"], inputs["image_grid_thw"], kept_lists
    )
    assert torch.equal(received["position_ids"], expected)
    real = inputs["attention_mask"].bool()
    deltas = [int(expected[:, row, real[row]].max()) + 1 - int(real[row].sum()) for row in range(len(real))]
    assert model.model.rope_deltas.flatten().tolist() == deltas


@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("family", FAMILIES)
def test_generate_encodes_once_and_matches_the_forward_pass(family, batch):
    model, processor = make_model(family), make_processor(family)
    stock = make_inputs(family, processor, batch)
    apply_visionzip(model, processor)
    inputs = make_inputs(family, processor, batch)
    _, which = BATCHES[batch]
    assert int((inputs["input_ids"] == IMAGE_ID).sum()) == sum(KEPT[MERGED_TOKENS[i]] for i in which)
    assert int((stock["input_ids"] == IMAGE_ID).sum()) == sum(MERGED_TOKENS[i] for i in which)
    encoder_runs = []
    hook = model.model.visual.register_forward_hook(lambda *args: encoder_runs.append(1))
    generated = model.generate(**inputs, **GENERATE, return_dict_in_generate=True, output_logits=True)
    hook.remove()
    assert len(encoder_runs) == 1, "generate must run the encoder once"
    length = inputs["input_ids"].shape[1]
    assert generated.sequences.shape == (inputs["input_ids"].shape[0], length + 3)
    forward_logits = language_model_inputs(model, inputs)["logits"][:, -1]
    torch.testing.assert_close(generated.logits[0], forward_logits, atol=1e-5, rtol=1e-5)


def test_generate_under_inference_mode_encodes_once():
    model, processor = make_model("qwen2_5_vl"), make_processor("qwen2_5_vl")
    apply_visionzip(model, processor)
    inputs = make_inputs("qwen2_5_vl", processor, "3-images")
    expected = model.generate(**inputs, **GENERATE)
    encoder_runs = []
    hook = model.model.visual.register_forward_hook(lambda *args: encoder_runs.append(1))
    with torch.inference_mode():
        inference_inputs = {name: tensor.clone() for name, tensor in inputs.items()}
        assert inference_inputs["pixel_values"].is_inference()
        generated = model.generate(**inference_inputs, **GENERATE)
    hook.remove()
    assert len(encoder_runs) == 1
    assert torch.equal(generated, expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_second_turn_continues_the_cache_without_pixels(family):
    model, processor = make_model(family), make_processor(family)
    apply_visionzip(model, processor)
    inputs = make_inputs(family, processor, "2-images")
    first = model.generate(**inputs, **GENERATE, return_dict_in_generate=True)

    follow_up = processor.tokenizer(
        ["user: more please ? assistant:"] * 2, add_special_tokens=False, return_tensors="pt"
    )
    input_ids = torch.cat([first.sequences, follow_up["input_ids"]], dim=1)
    added = input_ids.shape[1] - inputs["input_ids"].shape[1]
    attention_mask = torch.cat([inputs["attention_mask"], torch.ones(2, added, dtype=torch.long)], dim=1)
    text_types = torch.zeros(2, added, dtype=torch.long)
    mm_token_type_ids = torch.cat([inputs["mm_token_type_ids"], text_types], dim=1)
    encoder_runs = []
    hook = model.model.visual.register_forward_hook(lambda *args: encoder_runs.append(1))
    cached = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        mm_token_type_ids=mm_token_type_ids,
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
        mm_token_type_ids=mm_token_type_ids,
        pixel_values=inputs["pixel_values"],
        image_grid_thw=inputs["image_grid_thw"],
        **GENERATE,
        return_dict_in_generate=True,
        output_logits=True,
    )
    torch.testing.assert_close(cached.logits[0], fresh.logits[0], atol=1e-4, rtol=1e-4)
    assert torch.equal(cached.sequences, fresh.sequences)


@pytest.mark.parametrize("family", FAMILIES)
def test_remove_restores_the_model_and_processor_exactly(family):
    model, processor = make_model(family), make_processor(family)
    inputs = make_inputs(family, processor, "3-images")
    before = model.generate(**inputs, **GENERATE, return_dict_in_generate=True, output_logits=True)
    model_state = instance_state(model)
    processor_state = dict(vars(processor))
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    handle = apply_visionzip(model, processor, dominant=0.45, contextual=0.05)
    model.generate(**make_inputs(family, processor, "3-images"), **GENERATE)
    handle.remove()

    assert instance_state(model) == model_state
    assert dict(vars(processor)) == processor_state
    assert all(torch.equal(weights[name], tensor) for name, tensor in model.state_dict().items())
    again = make_inputs(family, processor, "3-images")
    assert torch.equal(again["input_ids"], inputs["input_ids"])
    after = model.generate(**again, **GENERATE, return_dict_in_generate=True, output_logits=True)
    assert torch.equal(after.sequences, before.sequences)
    assert all(torch.equal(a, b) for a, b in zip(after.logits, before.logits))


@pytest.mark.parametrize("family", FAMILIES)
def test_encoder_keeps_its_attention_implementation(family, monkeypatch):
    model, processor = make_model(family), make_processor(family)
    module = __import__(type(model).__module__, fromlist=["eager_attention_forward"])

    def no_eager(*args, **kwargs):
        raise AssertionError("eager attention was used")

    monkeypatch.setattr(module, "eager_attention_forward", no_eager)
    apply_visionzip(model, processor)
    model.generate(**make_inputs(family, processor, "3-images"), **GENERATE)
    assert model.config.vision_config._attn_implementation == "sdpa"


# ----------------------------------------------------------------------------- processor and budgets


@pytest.mark.parametrize("family", FAMILIES)
def test_processor_counts_match_the_features(family):
    model, processor = make_model(family), make_processor(family)
    apply_visionzip(model, processor, dominant=4, contextual=1)
    inputs = make_inputs(family, processor, "3-images")
    with torch.no_grad():
        output = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    assert [len(features) for features in output.pooler_output] == [5, 5, 5]
    assert (inputs["input_ids"] == IMAGE_ID).sum(dim=1).tolist() == [5, 10]
    image_sizes = [image.size[::-1] for image in make_images(family, [0, 1, 2])]
    assert processor._get_num_multimodal_tokens(image_sizes=image_sizes).num_image_tokens == [5, 5, 5]


def test_budget_rounds_fractions_as_published():
    budget = Budget(0.65, 0.05)
    counts = [budget.counts(size) for size in (49, 140, 37, 6, 1)]
    assert counts == [(31, 2), (91, 7), (24, 1), (3, 1), (0, 1)]
    assert Budget(5, 0).counts(6) == (5, 0)
    with pytest.raises(ValueError, match="cannot keep"):
        Budget(5, 2).counts(6)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("family", FAMILIES)
def test_bad_budgets_and_processors_are_refused(family):
    model, processor = make_model(family), make_processor(family)
    with pytest.raises(TypeError, match="dominant"):
        apply_visionzip(model, processor, dominant="half")
    with pytest.raises(ValueError, match="contextual"):
        apply_visionzip(model, processor, contextual=1.5)
    with pytest.raises(ValueError, match="at least one token"):
        apply_visionzip(model, processor, dominant=0, contextual=0)
    with pytest.raises(ValueError, match=r"1000000 \+ 0.05 is more than the largest image `processor` makes"):
        apply_visionzip(model, processor, dominant=10**6)
    with pytest.raises(ValueError, match="backend"):
        apply_visionzip(model, processor, backend="nonexistent")
    other = make_processor("qwen3_vl" if family == "qwen2_5_vl" else "qwen2_5_vl")
    with pytest.raises(TypeError, match="processor"):
        apply_visionzip(model, other)
    assert "get_image_features" not in vars(model.model), "a refused call changes nothing"
    handle = apply_visionzip(model, processor)
    with pytest.raises(ValueError, match="already"):
        apply_visionzip(model, processor)
    handle.remove()


@pytest.mark.parametrize("family", FAMILIES)
def test_unreduced_prompts_videos_and_oversized_budgets_are_refused(family):
    model, processor = make_model(family), make_processor(family)
    stock = make_inputs(family, processor, "3-images")
    apply_visionzip(model)
    with pytest.raises(ValueError, match="placeholder count"):
        model.generate(**stock, **GENERATE)
    with pytest.raises(ValueError, match="video"):
        model.model.get_video_features(stock["pixel_values"], stock["image_grid_thw"])
    handle = apply_visionzip(make_model(family), processor, dominant=12, contextual=1)
    with pytest.raises(ValueError, match="cannot keep"):
        make_inputs(family, processor, "3-images")
    handle.remove()


# ----------------------------------------------------------------------------- GPU


@pytest.mark.cuda
@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_run_keeps_the_cpu_tokens(family, monkeypatch):
    """On a GPU (``"auto"``: the Triton backends) the kept tokens are the CPU run's; features and
    the first logits agree within float32 rounding of the two devices' matmuls (TF32 off)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model, processor = make_model(family), make_processor(family)
    apply_visionzip(model, processor)
    inputs = make_inputs(family, processor, "3-images")
    with torch.no_grad():
        cpu = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    cpu_generated = model.generate(**inputs, **GENERATE, return_dict_in_generate=True, output_logits=True)

    cuda_model = make_model(family).cuda()
    apply_visionzip(cuda_model, processor)
    cuda_inputs = {name: tensor.cuda() for name, tensor in inputs.items()}
    with torch.no_grad():
        gpu = cuda_model.model.get_image_features(
            cuda_inputs["pixel_values"], cuda_inputs["image_grid_thw"]
        )
    assert [idx.tolist() for idx in gpu.kept_idx] == [idx.tolist() for idx in cpu.kept_idx]
    for gpu_features, cpu_features in zip(gpu.pooler_output, cpu.pooler_output):
        torch.testing.assert_close(gpu_features.cpu(), cpu_features, atol=1e-4, rtol=1e-4)
    gpu_generated = cuda_model.generate(
        **cuda_inputs, **GENERATE, return_dict_in_generate=True, output_logits=True
    )
    torch.testing.assert_close(
        gpu_generated.logits[0].cpu(), cpu_generated.logits[0], atol=1e-4, rtol=1e-4
    )
