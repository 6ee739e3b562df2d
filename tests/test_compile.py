"""A model with ``apply_visionzip`` under ``torch.compile`` and with the static KV cache.

The tokens must be the eager model's. Compiling is slow on a small CPU, so these few tests use the
``aot_eager`` backend: Dynamo traces the model (graph breaks, data-dependent shapes and the ops'
fake kernels are all exercised) and AOT autograd builds its graphs, without Inductor's code
generation. Models and inputs are the tiny ones of ``test_integrations.py``.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from test_integrations import (
    CONTEXTUAL,
    DOMINANT,
    GENERATE,
    make_inputs,
    make_llava,
    make_llava_next,
    make_llava_next_processor,
    make_llava_processor,
)
from visionzip_kernels.integrations import apply_visionzip

TWO_TOKENS = dict(GENERATE, max_new_tokens=2, min_new_tokens=2)


def patched(family: str, **options):
    if family == "llava":
        model, processor = make_llava(), make_llava_processor()
    else:
        model, processor = make_llava_next(), make_llava_next_processor()
    handle = apply_visionzip(model, processor, dominant=DOMINANT, contextual=CONTEXTUAL, **options)
    return model, processor, handle


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_the_static_cache_gives_the_eager_tokens(family):
    model, processor, _ = patched(family)
    inputs = make_inputs(processor, "3-images")
    expected = model.generate(**inputs, **GENERATE)
    static = model.generate(**inputs, **GENERATE, cache_implementation="static")
    assert torch.equal(static, expected)


def our_innermost_frame(user_stack):
    """The innermost frame of a graph break's stack if it is this package's code, else ``None``
    (a break inside transformers' code is transformers', even where this package's wrapper calls it)."""
    return user_stack[-1] if user_stack and "visionzip_kernels" in user_stack[-1].filename else None


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_a_compiled_model_gives_the_eager_tokens(family):
    """The whole forward compiled, the vision path included."""
    torch._dynamo.reset()
    model, processor, _ = patched(family)
    inputs = make_inputs(processor, "3-images")
    expected = model.generate(**inputs, **TWO_TOKENS)
    model.forward = torch.compile(model.forward, backend="aot_eager", dynamic=False)
    compiled = model.generate(
        **inputs, **TWO_TOKENS, cache_implementation="static", disable_compile=True
    )
    assert torch.equal(compiled, expected)


@torch.no_grad()
def test_no_graph_break_is_ours_but_the_read_of_the_image_sizes():
    """Of the graph breaks in LLaVA-NeXT's forward, only the one read of the image sizes (host
    values that decide the crop counts) is in this package's code; the others are transformers'
    own (its placeholder-count checks read the device). LLaVA's vision path is one graph (the
    encoder test compiles it with ``fullgraph=True``)."""
    model, processor, _ = patched("llava_next")
    explanation = torch._dynamo.explain(model.forward)(**make_inputs(processor, "3-images"))
    ours = [our_innermost_frame(reason.user_stack) for reason in explanation.break_reasons]
    assert [frame.name for frame in ours if frame is not None] == ["host_image_sizes"]


def test_the_fastest_recipe_gives_the_eager_tokens():
    """The README's recipe: CUDA-graph vision path (on a CPU it runs eagerly, with one warning),
    the language model compiled, the static cache."""
    torch._dynamo.reset()
    model, processor, _ = patched("llava")
    inputs = make_inputs(processor, "3-images")
    expected = model.generate(**inputs, **TWO_TOKENS)
    model, processor, _ = patched("llava", cuda_graphs=True)
    language_model = model.model.language_model
    language_model.forward = torch.compile(language_model.forward, backend="aot_eager", dynamic=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recipe = model.generate(
            **inputs, **TWO_TOKENS, cache_implementation="static", disable_compile=True
        )
    assert [str(w.message) for w in caught if "cuda_graphs" in str(w.message)] != []
    assert torch.equal(recipe, expected)
