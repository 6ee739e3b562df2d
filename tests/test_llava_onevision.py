"""``apply_visionzip`` on tiny random LLaVA-OneVision models: images (crops), videos (frames), both.

Models and processors come from ``visionzip_kernels.testing.onevision`` (no download): a SigLIP
tower of 112 x 112 pixels in 14-pixel patches (8 x 8 = 64 tokens, no CLS; a video frame pools to
4 x 4 = 16 tokens in the stock model), read at its last layer as the released checkpoints are
(``vision_feature_layer=-1``); a 2-layer Qwen2; crops up to 2 x 2. The video processor is
LLaVA-OneVision's with torchvision's resize and normalise done in plain torch: the placeholder
expansion under test is the processor's own. The budget is 5 dominant + 3 contextual tokens per
crop and per frame. Weights, images and videos are seeded.
"""
from __future__ import annotations

import copy

import pytest
import torch

from visionzip_kernels import zip_tokens
from visionzip_kernels.integrations import apply_visionzip
from visionzip_kernels.testing.onevision import (
    IMAGE_TOKEN_ID as IMAGE_ID,
    VIDEO_TOKEN_ID as VIDEO_ID,
    make_images,
    make_video,
    tiny_model,
    tiny_processor,
)

DOMINANT, CONTEXTUAL = 5, 3
TOKENS = DOMINANT + CONTEXTUAL
IMAGE_SIZE = 112
PATCHES = 64  # tokens per crop or frame from the tower: 8 x 8 patches of 14 pixels
PINPOINTS = [[112, 112], [112, 224], [224, 112], [224, 224]]
GENERATE = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)

# (height, width) -> crop grid (rows, cols) under PINPOINTS with 112-pixel crops
GRIDS = {(60, 200): (1, 2), (200, 60): (2, 1), (150, 170): (2, 2)}


def make_model(seed: int = 0, **config_kwargs):
    return tiny_model(IMAGE_SIZE, PINPOINTS, seed, **config_kwargs)


def make_processor():
    return tiny_processor(IMAGE_SIZE, PINPOINTS)


def image_tokens(size) -> int:
    rows, cols = GRIDS[tuple(size)]
    return TOKENS * (1 + rows * cols) + rows


def video_tokens(frames: int) -> int:
    return frames * TOKENS + 1


IMAGE_PROMPT = "user <image> describe the image ? assistant"
VIDEO_PROMPT = "user <video> describe the video ? assistant"
BOTH_PROMPT = "user <image> and <video> compare them ? assistant"
TWO_IMAGES_PROMPT = "user <image> <image> compare them ? assistant"

# name -> (processor keyword arguments, expected VisionZip placeholders of each kind per prompt)
CASES = {
    "image": (lambda: dict(text=[IMAGE_PROMPT], images=make_images([(60, 200)])),
              {"image": [image_tokens((60, 200))], "video": [0]}),
    "video-4": (lambda: dict(text=[VIDEO_PROMPT], videos=[make_video(4)]),
                {"image": [0], "video": [video_tokens(4)]}),
    "video-8": (lambda: dict(text=[VIDEO_PROMPT], videos=[make_video(8)]),
                {"image": [0], "video": [video_tokens(8)]}),
    "image+video": (lambda: dict(text=[BOTH_PROMPT], images=make_images([(150, 170)]),
                                 videos=[make_video(4)]),
                    {"image": [image_tokens((150, 170))], "video": [video_tokens(4)]}),
    "two-images": (lambda: dict(text=[TWO_IMAGES_PROMPT], images=[make_images([(60, 200), (200, 60)])]),
                   {"image": [2 * (TOKENS + 1)], "video": [0]}),
    "batch": (lambda: dict(text=[IMAGE_PROMPT, IMAGE_PROMPT], images=make_images([(200, 60), (150, 170)]),
                           padding=True),
              {"image": [image_tokens((200, 60)), image_tokens((150, 170))], "video": [0, 0]}),
}


def make_inputs(processor, case: str):
    kwargs, _ = CASES[case]
    return processor(**kwargs(), return_tensors="pt")


def placeholders(inputs, token_id: int) -> list[int]:
    return (inputs["input_ids"] == token_id).sum(dim=1).tolist()


# ----------------------------------------------------------------------------- references


def eager_zip(tower, pixel_values: torch.Tensor, layer: int):
    """VisionZip as published, at ``hidden_states[layer]`` (``layer`` < 0): eager attention maps.

    Runs a copy of ``tower`` under eager attention with ``output_attentions=True``, takes
    ``attentions[layer]``, ``hidden_states[layer]`` and that layer's key projections, and applies
    the reference ``zip_tokens`` (no CLS token). Returns ``(tokens [B, TOKENS, D], dominant_idx)``.
    """
    eager = copy.deepcopy(tower)
    eager.set_attn_implementation("eager")
    keys = {}
    key_proj = eager.encoder.layers[layer].self_attn.k_proj
    hook = key_proj.register_forward_hook(lambda module, args, output: keys.setdefault("k", output))
    with torch.no_grad():
        out = eager(pixel_values, output_attentions=True, output_hidden_states=True)
    hook.remove()
    hidden = out.hidden_states[layer]
    batch, n_tokens, _ = hidden.shape
    per_head_keys = keys["k"].view(batch, n_tokens, eager.config.num_attention_heads, -1).transpose(1, 2)
    return zip_tokens(
        hidden, out.attentions[layer], DOMINANT, CONTEXTUAL, per_head_keys, False, backend="reference"
    )


def language_model_rows(model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The language model's input embeddings at the image and at the video placeholders."""
    captured = {}

    def capture(module, args, kwargs):
        captured["embeds"] = kwargs["inputs_embeds"]

    hook = model.model.language_model.register_forward_pre_hook(capture, with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
    hook.remove()
    embeds, ids = captured["embeds"], inputs["input_ids"]
    return embeds[ids == IMAGE_ID], embeds[ids == VIDEO_ID]


def expected_image_rows(model, inputs, layer: int) -> torch.Tensor:
    """Each image's crops zipped on an eager run and projected, written out in the documented
    order: base crop, then each row of crops followed by ``image_newline``; or, for an image that
    shares its prompt, base crop then ``image_newline``."""
    alone = [int(n) == 1 for n in inputs["batch_num_images"] for _ in range(int(n))]
    newline = model.model.image_newline[None]
    rows_out = []
    for pixels, size, single in zip(inputs["pixel_values"], inputs["image_sizes"].tolist(), alone):
        rows, cols = GRIDS[tuple(size)] if single else (0, 0)
        tokens, _ = eager_zip(model.model.vision_tower, pixels[: 1 + rows * cols], layer)
        with torch.no_grad():
            crops = model.model.multi_modal_projector(tokens)
        rows_out.append(crops[0])
        if not single:
            rows_out.append(newline)
        for row in range(rows):
            rows_out.extend(crops[1 + row * cols + col] for col in range(cols))
            rows_out.append(newline)
    return torch.cat(rows_out, dim=0)


def expected_video_rows(model, inputs, layer: int) -> torch.Tensor:
    """Each video's frames zipped on an eager run and projected, frame after frame, then
    ``image_newline``."""
    rows_out = []
    for frames in inputs["pixel_values_videos"]:
        tokens, _ = eager_zip(model.model.vision_tower, frames, layer)
        with torch.no_grad():
            rows_out.extend(model.model.multi_modal_projector(tokens))
        rows_out.append(model.model.image_newline[None])
    return torch.cat(rows_out, dim=0)


def stock_placeholders(case: str) -> tuple[list[int], list[int]]:
    inputs = make_inputs(make_processor(), case)
    return placeholders(inputs, IMAGE_ID), placeholders(inputs, VIDEO_ID)


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", sorted(CASES))
def test_generate_runs_with_reduced_placeholders(case):
    model, processor = make_model(), make_processor()
    stock_images, stock_videos = stock_placeholders(case)
    with apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL):
        inputs = make_inputs(processor, case)
        output_ids = model.generate(**inputs, **GENERATE)
    _, expected = CASES[case]
    assert placeholders(inputs, IMAGE_ID) == expected["image"]
    assert placeholders(inputs, VIDEO_ID) == expected["video"]
    for zipped, stock in zip(expected["image"] + expected["video"], stock_images + stock_videos):
        assert zipped < stock or zipped == stock == 0
    prompt_length = inputs["input_ids"].shape[1]
    assert output_ids.shape == (inputs["input_ids"].shape[0], prompt_length + 3)
    assert torch.equal(output_ids[:, :prompt_length], inputs["input_ids"])


@pytest.mark.parametrize(
    "case, layer", [("image+video", -1), ("image+video", -2), ("two-images", -1), ("batch", -1), ("video-8", -1)]
)
def test_features_equal_the_ops_applied_to_an_eager_run(case, layer):
    model, processor = make_model(vision_feature_layer=layer), make_processor()
    later_layer_calls = []
    for later in model.model.vision_tower.encoder.layers[len(model.model.vision_tower.encoder.layers) + 1 + layer:]:
        later.register_forward_hook(lambda *args: later_layer_calls.append(1))
    apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL)
    inputs = make_inputs(processor, case)
    received_images, received_videos = language_model_rows(model, inputs)
    assert not later_layer_calls, "no encoder layer after the feature layer runs"
    if "pixel_values" in inputs:
        expected = expected_image_rows(model, inputs, layer)
        torch.testing.assert_close(received_images, expected, atol=1e-5, rtol=1e-5)
    if "pixel_values_videos" in inputs:
        expected = expected_video_rows(model, inputs, layer)
        torch.testing.assert_close(received_videos, expected, atol=1e-5, rtol=1e-5)


def test_video_outputs_hold_each_frames_tokens_and_indices():
    """Called directly on the inner model, with no layer given: the config's layer is read."""
    model, processor = make_model(vision_feature_layer=-2), make_processor()
    apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL)
    videos = make_inputs(processor, "video-4")["pixel_values_videos"]
    videos = torch.cat([videos, videos.flip(1)])  # two videos of 4 frames
    expected_tokens, expected_idx = eager_zip(model.model.vision_tower, videos.flatten(0, 1), -2)
    with torch.no_grad():
        output = model.model.get_video_features(videos)
        as_tuple = model.get_video_features(videos, return_dict=False)
    assert output.pooler_output.shape == (2, video_tokens(4), 32)
    assert torch.equal(output.dominant_idx, expected_idx)
    torch.testing.assert_close(output.last_hidden_state, expected_tokens, atol=1e-5, rtol=1e-5)
    assert torch.equal(as_tuple[0], output.last_hidden_state)


@pytest.mark.parametrize("case", ["image+video", "two-images", "batch"])
def test_processor_counts_match_the_features(case):
    model, processor = make_model(), make_processor()
    apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL)
    inputs = make_inputs(processor, case)
    with torch.no_grad():
        images = model.model.get_image_features(
            inputs["pixel_values"], inputs["image_sizes"], batch_num_images=inputs["batch_num_images"]
        )
        videos = (
            model.model.get_video_features(inputs["pixel_values_videos"]).pooler_output
            if "pixel_values_videos" in inputs else []
        )
    per_prompt, start = [], 0
    for count in inputs["batch_num_images"].tolist():
        per_prompt.append(sum(len(f) for f in images.pooler_output[start : start + count]))
        start += count
    assert placeholders(inputs, IMAGE_ID) == per_prompt
    if len(videos):
        assert placeholders(inputs, VIDEO_ID) == [video.shape[0] for video in videos]


def test_serving_counts_match_the_features():
    model, processor = make_model(), make_processor()
    apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL)
    sizes = sorted(GRIDS)
    served = processor._get_num_multimodal_tokens(image_sizes=sizes, video_sizes=[(4, 90, 130), (8, 90, 130)])
    assert served.num_image_tokens == [image_tokens(size) for size in sizes]
    assert served.num_video_tokens == [video_tokens(4), video_tokens(8)]
    inputs = processor(text=[IMAGE_PROMPT] * 3, images=make_images(sizes), return_tensors="pt", padding=True)
    with torch.no_grad():
        features = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"])
    assert [len(f) for f in features.pooler_output] == served.num_image_tokens


def model_outputs(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def test_remove_restores_model_and_processor_exactly():
    model, processor = make_model(), make_processor()
    inputs_before = make_inputs(processor, "image+video")
    logits_before = model_outputs(model, inputs_before)
    served_before = processor._get_num_multimodal_tokens(image_sizes=[(60, 200)], video_sizes=[(4, 9, 9)])
    attributes = (set(vars(model)), set(vars(model.model)), set(vars(processor)))

    handle = apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL)
    model.generate(**make_inputs(processor, "image+video"), **GENERATE)
    handle.remove()
    handle.remove()

    assert not handle.active
    assert (set(vars(model)), set(vars(model.model)), set(vars(processor))) == attributes
    inputs_after = make_inputs(processor, "image+video")
    assert inputs_after.keys() == inputs_before.keys()
    for key in inputs_before:
        assert torch.equal(inputs_after[key], inputs_before[key]), key
    assert torch.equal(model_outputs(model, inputs_after), logits_before)
    served_after = processor._get_num_multimodal_tokens(image_sizes=[(60, 200)], video_sizes=[(4, 9, 9)])
    assert served_after == served_before


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("layer, message", [([-1, -2], "must be an int"), (0, "not the output of one")])
def test_feature_layers_visionzip_cannot_read_are_refused(layer, message):
    model = make_model(vision_feature_layer=layer)
    with pytest.raises(ValueError, match=message):
        apply_visionzip(model, dominant=DOMINANT, contextual=CONTEXTUAL)
    assert "get_image_features" not in vars(model.model)


def test_a_budget_above_the_towers_tokens_is_refused():
    with pytest.raises(ValueError, match=f"more than the {PATCHES} tokens"):
        apply_visionzip(make_model(), dominant=PATCHES, contextual=1)


def test_a_mismatched_processor_is_refused_and_nothing_is_changed():
    model, processor = make_model(), make_processor()
    processor.video_token_id = IMAGE_ID
    with pytest.raises(ValueError, match="video token id"):
        apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL)
    assert "get_video_features" not in vars(model.model)
    assert "replace_video_token" not in vars(processor)
