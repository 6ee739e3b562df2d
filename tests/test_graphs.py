"""``integrations.graphs``: the CUDA-graph vision path of ``apply_visionzip(..., cuda_graphs=True)``.

On the CPU the cache is exercised with ``static_capture``, a capture with a CUDA graph's semantics
(one static input buffer, static output buffers that every replay rewrites in place), so that the
bound, the LRU order, the clones handed out, the fallback and its warning, and the removal are
checked on real model outputs; and the real ``capture_cuda_graph`` is checked to refuse CPU pixels
with one warning. The ``cuda`` tests capture real graphs of the tiny models on a GPU.
Models, processors and inputs are the tiny ones of ``test_integrations.py``.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from transformers import CLIPVisionModel

from test_integrations import (
    CONTEXTUAL,
    DOMINANT,
    GENERATE,
    make_inputs,
    make_llava,
    make_llava_next,
    make_llava_next_processor,
    make_llava_processor,
    vision_config,
)
from qwen_vl_models import make_model as make_qwen_vl
from visionzip_kernels.integrations import apply_visionzip, graphs
from visionzip_kernels.integrations.graphs import GraphUnavailable, StaticGraph, VisionGraphs
from visionzip_kernels.testing.onevision import tiny_model as tiny_onevision_model


class StaticCapture:
    """A capture with CUDA-graph semantics on any device; records the shapes it captured.

    ``refuse``: shapes whose capture fails with ``GraphUnavailable``.
    """

    def __init__(self, refuse=()):
        self.captured: list[tuple[int, ...]] = []
        self.attempts = 0
        self.refuse = set(refuse)

    def __call__(self, path, pixel_values) -> StaticGraph:
        self.attempts += 1
        shape = tuple(pixel_values.shape)
        if shape in self.refuse:
            raise GraphUnavailable(f"the capture of {list(shape)} failed (refused by the test)")
        self.captured.append(shape)
        static_input = pixel_values.clone()
        static_outputs = tuple(path(static_input))

        def replay():
            for buffer, value in zip(static_outputs, path(static_input)):
                buffer.copy_(value)

        return StaticGraph(static_input, static_outputs, replay)


def family_parts(family: str):
    if family == "llava":
        return make_llava(), make_llava_processor()
    return make_llava_next(), make_llava_next_processor()


def vision_graphs_of(model) -> VisionGraphs:
    """The ``VisionGraphs`` that the replaced ``get_image_features`` runs its vision path through."""
    return model.model.get_image_features.__func__.keywords["project"]


def tiny_path(model, pixel_values):
    """A stand-in vision path: two outputs computed from the pixels and the model's weights."""
    weight = next(model.parameters())
    return pixel_values * weight.flatten()[0], pixel_values.sum(dim=(1, 2, 3))


def pixels(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, 4, 4, generator=torch.Generator().manual_seed(seed))


def image_features(model, inputs) -> list[torch.Tensor]:
    """Every tensor ``get_image_features`` returns: each image's features, the zipped tokens and
    the dominant indices."""
    image_inputs = {k: v for k, v in inputs.items() if k in ("pixel_values", "image_sizes")}
    output = model.model.get_image_features(**image_inputs)
    return [*output.pooler_output, output.last_hidden_state, output.dominant_idx]


# ----------------------------------------------------------------------------- the cache


@torch.no_grad()
def test_replays_hand_out_clones_that_later_replays_leave_alone():
    model = torch.nn.Linear(2, 2)
    capture = StaticCapture()
    cache = VisionGraphs(tiny_path, cache_size=4, capture=capture)
    first_pixels, second_pixels = pixels(3, 0), pixels(3, 1)
    first = cache(model, first_pixels)
    second = cache(model, second_pixels)
    assert capture.captured == [(3, 3, 4, 4)], "one capture serves both calls"
    for got, expected in zip(first, tiny_path(model, first_pixels)):
        assert torch.equal(got, expected), "the first result was overwritten by the second replay"
    for got, expected in zip(second, tiny_path(model, second_pixels)):
        assert torch.equal(got, expected)


@torch.no_grad()
def test_the_cache_is_bounded_and_evicts_the_least_recently_used():
    model = torch.nn.Linear(2, 2)
    capture = StaticCapture()
    cache = VisionGraphs(tiny_path, cache_size=2, capture=capture)
    for batch in (1, 2, 1, 3):
        cache(model, pixels(batch, batch))
    assert [s.shape[0] for s in cache.signatures] == [1, 3], "batch 2 was the least recently used"
    assert [shape[0] for shape in capture.captured] == [1, 2, 3]
    cache(model, pixels(2, 5))
    assert [s.shape[0] for s in cache.signatures] == [3, 2]
    assert [shape[0] for shape in capture.captured] == [1, 2, 3, 2]
    assert len(cache) == 2


@torch.no_grad()
def test_an_uncapturable_signature_runs_eagerly_with_one_warning():
    model = torch.nn.Linear(2, 2)
    capture = StaticCapture(refuse={(2, 3, 4, 4)})
    cache = VisionGraphs(tiny_path, cache_size=2, capture=capture)
    with pytest.warns(RuntimeWarning, match=r"runs eagerly: the capture of \[2, 3, 4, 4\] failed"):
        result = cache(model, pixels(2, 0))
    assert all(torch.equal(a, b) for a, b in zip(result, tiny_path(model, pixels(2, 0))))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = cache(model, pixels(2, 1))
        cache(model, pixels(1, 1))  # another signature is still captured
    assert all(torch.equal(a, b) for a, b in zip(again, tiny_path(model, pixels(2, 1))))
    assert capture.attempts == 2, "the refused signature is not tried again"
    assert capture.captured == [(1, 3, 4, 4)]
    assert len(cache) == 1


def test_autograd_runs_eagerly_with_one_warning():
    model = torch.nn.Linear(2, 2)
    capture = StaticCapture()
    cache = VisionGraphs(tiny_path, cache_size=2, capture=capture)
    with pytest.warns(RuntimeWarning, match="autograd is enabled"):
        scaled, _ = cache(model, pixels(1, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache(model, pixels(1, 0))
    assert scaled.requires_grad and not capture.captured


@torch.no_grad()
def test_cpu_pixels_run_eagerly_with_one_warning_naming_the_device():
    model, processor = make_llava(), make_llava_processor()
    with apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL):
        expected = model.generate(**make_inputs(processor, "3-images"), **GENERATE)
    apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL, cuda_graphs=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for batch in ("1-image", "3-images", "3-images"):
            output_ids = model.generate(**make_inputs(processor, batch), **GENERATE)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "pixel_values are on cpu" in messages[0], messages
    assert len(vision_graphs_of(model)) == 0
    assert torch.equal(output_ids, expected)


# ----------------------------------------------------------------------------- in the models


@pytest.mark.parametrize("family", ["llava", "llava_next"])
@torch.no_grad()
def test_graphs_give_the_eager_tokens_and_remove_frees_them(family, monkeypatch):
    """LLaVA: 3 images in 2 prompts; LLaVA-NeXT: 3 images of 3, 3 and 5 crops."""
    capture = StaticCapture()
    monkeypatch.setattr(graphs, "capture_cuda_graph", capture)
    model, processor = family_parts(family)
    with apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL):
        inputs = make_inputs(processor, "3-images")
        expected_ids = model.generate(**inputs, **GENERATE)
        expected = image_features(model, inputs)
    handle = apply_visionzip(
        model, processor, dominant=DOMINANT, contextual=CONTEXTUAL, cuda_graphs=True,
        graph_cache_size=2,
    )
    cache = vision_graphs_of(model)
    one_image = make_inputs(processor, "1-image")
    first = image_features(model, inputs)
    model.generate(**one_image, **GENERATE)  # a second graph
    other_pixels = {**inputs, "pixel_values": inputs["pixel_values"].neg()}
    model.generate(**other_pixels, **GENERATE)  # the first graph replayed over its buffers
    for got, want in zip(first, expected):
        assert torch.equal(got, want), "features handed out were overwritten by a later replay"
    assert torch.equal(model.generate(**inputs, **GENERATE), expected_ids)
    assert len(cache) == 2 and len(capture.captured) == 2
    handle.remove()
    assert len(cache) == 0, "remove() frees the graphs"
    assert "get_image_features" not in vars(model.model)


@torch.no_grad()
def test_a_deep_copy_captures_its_own_weights(monkeypatch):
    monkeypatch.setattr(graphs, "capture_cuda_graph", StaticCapture())
    model, processor = make_llava(), make_llava_processor()
    apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL, cuda_graphs=True)
    inputs = make_inputs(processor, "1-image")
    original = image_features(model, inputs)[0]
    clone = copy.deepcopy(model)
    clone.model.multi_modal_projector.linear_2.bias.add_(1.0)
    assert not torch.equal(image_features(clone, inputs)[0], original)
    assert torch.equal(image_features(model, inputs)[0], original)


def test_graph_options_are_checked():
    model = make_llava()
    with pytest.raises(ValueError, match="`graph_cache_size` must be >= 1"):
        apply_visionzip(model, cuda_graphs=True, graph_cache_size=0)
    for size in (0, -3):  # checked whether or not cuda_graphs is on
        with pytest.raises(ValueError, match="`graph_cache_size` must be >= 1"):
            apply_visionzip(model, graph_cache_size=size)
    with pytest.raises(TypeError, match="`cuda_graphs` must be a bool"):
        apply_visionzip(model, cuda_graphs="yes")
    with pytest.raises(TypeError, match="`graph_cache_size` must be an int"):
        apply_visionzip(model, cuda_graphs=True, graph_cache_size=2.5)
    assert "get_image_features" not in vars(model.model)


@pytest.mark.parametrize(
    "make_model, reason",
    [
        (lambda: CLIPVisionModel(vision_config("clip")), "no projector to capture"),
        (lambda: tiny_onevision_model(112, [[112, 112]], 0), "video frames vary in number"),
        (lambda: make_qwen_vl("qwen2_5_vl"), "images vary in size"),
    ],
    ids=["clip", "llava_onevision", "qwen2_5_vl"],
)
def test_cuda_graphs_are_refused_where_no_graph_can_serve(make_model, reason):
    model = make_model()
    before = {name: dict(vars(module)) for name, module in model.named_modules()}
    with pytest.raises(ValueError, match=f"LLaVA and LLaVA-NeXT models only.*{reason}"):
        apply_visionzip(model, cuda_graphs=True)
    assert {name: dict(vars(module)) for name, module in model.named_modules()} == before


# ----------------------------------------------------------------------------- on a GPU


def cuda_family(family: str):
    model, processor = family_parts(family)
    return model.to("cuda"), processor


@pytest.mark.cuda
@pytest.mark.parametrize("family", ["llava", "llava_next"])
@torch.inference_mode()
def test_cuda_graphs_replay_exactly_what_the_eager_path_gives(family):
    model, processor = cuda_family(family)
    handle = apply_visionzip(
        model, processor, dominant=DOMINANT, contextual=CONTEXTUAL, cuda_graphs=True,
        graph_cache_size=1,
    )
    batches = {name: make_inputs(processor, name).to("cuda") for name in ("1-image", "3-images")}
    graphed = {name: image_features(model, inputs) for name, inputs in batches.items()}
    again = {name: image_features(model, inputs) for name, inputs in batches.items()}
    graphed_ids = model.generate(**batches["3-images"], **GENERATE)
    cache = vision_graphs_of(model)
    assert len(cache) == 1 and cache.signatures[0].device.type == "cuda"
    handle.remove()
    assert len(cache) == 0

    with apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL):
        for name, inputs in batches.items():
            for got, repeat, want in zip(graphed[name], again[name], image_features(model, inputs)):
                assert torch.equal(got, want) and torch.equal(repeat, want), name
        assert torch.equal(graphed_ids, model.generate(**batches["3-images"], **GENERATE))


@pytest.mark.cuda
@torch.inference_mode()
def test_a_cuda_capture_that_fails_runs_eagerly_with_one_warning():
    model = torch.nn.Linear(2, 2).to("cuda")

    def synchronising_path(model, pixel_values):
        return (pixel_values * float(pixel_values.sum()),)  # a host read: capture must fail

    cache = VisionGraphs(synchronising_path, cache_size=2)
    pixel_values = pixels(2, 0).to("cuda")
    with pytest.warns(RuntimeWarning, match=r"the capture of pixel_values \[2, 3, 4, 4\].*failed"):
        (result,) = cache(model, pixel_values)
    assert torch.equal(result, synchronising_path(model, pixel_values)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache(model, pixel_values)
    assert len(cache) == 0


@pytest.mark.cuda
@torch.inference_mode()
def test_remove_releases_the_graphs_memory():
    """At least the static buffers go (the allocator may keep per-stream workspaces the warm-up
    made, so the total need not return to where it was)."""
    model, processor = cuda_family("llava_next")
    inputs = make_inputs(processor, "3-images").to("cuda")
    handle = apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL, cuda_graphs=True)
    image_features(model, inputs)
    (graph,) = vision_graphs_of(model)._graphs.values()
    static_bytes = sum(t.numel() * t.element_size() for t in (graph.static_input, *graph.static_outputs))
    del graph
    torch.cuda.synchronize()
    holding = torch.cuda.memory_allocated()
    handle.remove()
    torch.cuda.synchronize()
    assert holding - torch.cuda.memory_allocated() >= static_bytes
