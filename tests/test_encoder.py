"""Tests of ``integrations.encoder`` on tiny random CLIP and SigLIP vision models (no download).

``run_to_penultimate`` must give the model's own ``hidden_states[-2]`` and the penultimate layer's
projections, keep SDPA in every layer and never run the last one; ``visionzip_features`` must give
what the published way gives: ``zip_tokens`` on ``hidden_states[-2]`` and ``attentions[-2]`` of an
eager ``output_attentions=True`` run. Float32 models: the SDPA and eager runs differ by float32
rounding only, so values agree within ``1e-5`` and the chosen indices are equal.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch.overrides import TorchFunctionMode
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from visionzip_kernels import attention_importance
from visionzip_kernels.integrations.encoder import (
    LayerOutputs,
    has_cls_token,
    run_to_layer,
    run_to_penultimate,
    vision_transformer,
    visionzip_features,
)
from visionzip_kernels import zip_tokens

TOL = dict(rtol=1e-5, atol=1e-5)
K_DOM, K_CTX = 10, 4


def tiny_clip(layers: int = 3) -> CLIPVisionModel:
    """CLS + 7 x 7 patches = 50 tokens, 4 heads of 16."""
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=4,
        image_size=28, patch_size=4,
    )
    return CLIPVisionModel(config).eval()


def tiny_siglip() -> SiglipVisionModel:
    """7 x 7 patches = 49 tokens, no CLS, 4 heads of 18."""
    torch.manual_seed(0)
    config = SiglipVisionConfig(
        hidden_size=72, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        image_size=28, patch_size=4,
    )
    return SiglipVisionModel(config).eval()


MODELS = {"clip": tiny_clip, "siglip": tiny_siglip}


@pytest.fixture(params=sorted(MODELS))
def model(request):
    return MODELS[request.param]()


@pytest.fixture
def pixel_values():
    return torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))


def layer_projections(model, layer_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The penultimate layer's q and k ``[B, H, N, hd]`` computed again, eagerly, from its input."""
    attention = model.encoder.layers[-2].self_attn
    normed = model.encoder.layers[-2].layer_norm1(layer_input)
    batch, n_tokens, _ = normed.shape

    def heads(x):
        return x.view(batch, n_tokens, attention.num_heads, attention.head_dim).transpose(1, 2)

    return heads(attention.q_proj(normed)), heads(attention.k_proj(normed))


@torch.no_grad()
def test_penultimate_outputs_match_the_model(model, pixel_values):
    states = model(pixel_values, output_hidden_states=True).hidden_states
    outputs = run_to_penultimate(model, pixel_values)
    assert isinstance(outputs, LayerOutputs)
    torch.testing.assert_close(outputs.hidden, states[-2], rtol=0, atol=0)
    query, key = layer_projections(model, states[-3])
    torch.testing.assert_close(outputs.query, query, rtol=0, atol=0)
    torch.testing.assert_close(outputs.key, key, rtol=0, atol=0)
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    assert outputs.query.shape == (2, model.config.num_attention_heads, states[-2].shape[1], head_dim)
    assert outputs.scale == head_dim**-0.5


class AttentionCalls(TorchFunctionMode):
    """Counts SDPA calls and softmax calls (eager attention's) made through torch functions."""

    def __init__(self):
        super().__init__()
        self.sdpa = 0
        self.softmax = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.scaled_dot_product_attention:
            self.sdpa += 1
        if func in (torch.nn.functional.softmax, torch.softmax, torch.Tensor.softmax):
            self.softmax += 1
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def test_sdpa_kept_and_last_layer_not_run(model, pixel_values):
    assert model.config._attn_implementation == "sdpa"
    calls = [0] * len(model.encoder.layers)
    for index, layer in enumerate(model.encoder.layers):
        layer.register_forward_hook(lambda *_, index=index: calls.__setitem__(index, calls[index] + 1))
    with AttentionCalls() as attention_calls:
        run_to_penultimate(model, pixel_values)
    assert calls == [1, 1, 0]
    assert attention_calls.sdpa == len(model.encoder.layers) - 1
    assert attention_calls.softmax == 0
    assert model.config._attn_implementation == "sdpa"


@torch.no_grad()
def test_visionzip_features_compile_in_one_graph(model, pixel_values):
    """No hook, no host read: ``torch.compile(fullgraph=True)`` traces the encoder, the importance
    and the zip in one graph (AOT: through the ops' fake kernels), with the eager results. The
    reset keeps the other model's compilation out: a recompilation for a second encoder would make
    its attention ``scale`` a symbolic float, which the ops' argument checks do not trace."""
    torch._dynamo.reset()
    compiled = torch.compile(visionzip_features, backend="aot_eager", fullgraph=True)
    tokens, dominant_idx = compiled(model, pixel_values, K_DOM, K_CTX)
    expected_tokens, expected_idx = visionzip_features(model, pixel_values, K_DOM, K_CTX)
    assert torch.equal(dominant_idx, expected_idx)
    torch.testing.assert_close(tokens, expected_tokens, **TOL)


@pytest.mark.parametrize("backend", ("auto", "reference"))
@torch.no_grad()
def test_visionzip_features_match_the_published_way(model, pixel_values, backend):
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    published = eager(pixel_values, output_hidden_states=True, output_attentions=True)
    has_cls = has_cls_token(model)
    _, keys = layer_projections(eager, published.hidden_states[-3])
    expected_tokens, expected_idx = zip_tokens(
        published.hidden_states[-2], published.attentions[-2], K_DOM, K_CTX, keys, has_cls
    )

    tokens, dominant_idx = visionzip_features(model, pixel_values, K_DOM, K_CTX, backend=backend)
    torch.testing.assert_close(dominant_idx, expected_idx, rtol=0, atol=0)
    torch.testing.assert_close(tokens, expected_tokens, **TOL)

    outputs = run_to_penultimate(model, pixel_values)
    attn = published.attentions[-2]
    expected_rows = attn[:, :, 0] if has_cls else attn.mean(dim=2)
    importance = attention_importance(outputs.query, outputs.key, has_cls, outputs.scale)
    torch.testing.assert_close(importance, expected_rows, **TOL)


def test_vision_transformer_and_cls():
    clip, siglip = tiny_clip(), tiny_siglip()
    assert vision_transformer(clip) is clip
    assert vision_transformer(siglip) is siglip
    with_projection = CLIPVisionModelWithProjection(clip.config)
    assert vision_transformer(with_projection) is with_projection.vision_model
    assert has_cls_token(clip) and has_cls_token(with_projection)
    assert not has_cls_token(siglip)
    with pytest.raises(TypeError, match="expected a CLIPVisionModel or SiglipVisionModel.*got Linear"):
        vision_transformer(torch.nn.Linear(2, 2))


def test_one_layer_encoder_is_refused(pixel_values):
    with pytest.raises(ValueError, match="at least 2 layers"):
        run_to_penultimate(tiny_clip(layers=1), pixel_values)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ("auto", "reference"))
@torch.no_grad()
def test_visionzip_features_on_the_gpu_match_the_cpu(model, pixel_values, backend):
    """The SDPA encoder, the Triton importance and the GPU zip give the CPU's indices and tokens."""
    expected_tokens, expected_idx = visionzip_features(model, pixel_values, K_DOM, K_CTX)
    tokens, dominant_idx = visionzip_features(model.cuda(), pixel_values.cuda(), K_DOM, K_CTX, backend=backend)
    assert tokens.is_cuda and dominant_idx.is_cuda
    torch.testing.assert_close(dominant_idx.cpu(), expected_idx, rtol=0, atol=0)
    torch.testing.assert_close(tokens.cpu(), expected_tokens, **TOL)


@pytest.mark.parametrize("layer", (-1, 1))
@torch.no_grad()
def test_run_to_layer_reads_the_given_layer_and_runs_no_later_one(model, pixel_values, layer):
    """``hidden_states[-1]`` (LLaVA-OneVision's feature layer) and ``hidden_states[1]``: the output,
    the projections of that layer, and no call of a later layer."""
    states = model(pixel_values, output_hidden_states=True).hidden_states
    number = layer % len(states)
    calls = [0] * len(model.encoder.layers)
    for index, encoder_layer in enumerate(model.encoder.layers):
        encoder_layer.register_forward_hook(lambda *_, index=index: calls.__setitem__(index, calls[index] + 1))
    outputs = run_to_layer(model, pixel_values, layer)
    assert calls == [1] * number + [0] * (len(calls) - number)
    torch.testing.assert_close(outputs.hidden, states[layer], rtol=0, atol=0)
    attention, norm = model.encoder.layers[number - 1].self_attn, model.encoder.layers[number - 1].layer_norm1
    batch, n_tokens, _ = states[number - 1].shape
    expected_key = attention.k_proj(norm(states[number - 1]))
    expected_key = expected_key.view(batch, n_tokens, attention.num_heads, -1).transpose(1, 2)
    torch.testing.assert_close(outputs.key, expected_key, rtol=0, atol=0)


@pytest.mark.parametrize("layer", (0, 4, -4, 1.0, True))
def test_layers_that_are_not_an_encoder_layer_output_are_refused(model, pixel_values, layer):
    with pytest.raises(ValueError, match="is not the output of one of them"):
        run_to_layer(model, pixel_values, layer)
