"""Run a CLIP or SigLIP vision encoder to the layer VisionZip reads, as VisionZip needs it.

VisionZip reads three things from the encoder layer whose output the model uses as its visual
features (the **penultimate** layer in LLaVA, ``hidden_states[-2]``; the last layer of the 26-layer
SigLIP tower in LLaVA-OneVision, ``hidden_states[-1]``): that output, the attention its queries
give the keys, and its keys. The published code gets them from ``output_attentions=True``, which
forces eager attention in every layer and keeps every layer's ``N x N`` map. Here every layer keeps
the model's own attention implementation (SDPA/FlashAttention), that layer's queries and keys are
its own ``q_proj``/``k_proj`` applied to its ``layer_norm1`` output (the same kernels on the same
input as inside the layer, so the same values), the layers after it are not run at all, and
``attention_importance`` computes what ``zip_tokens`` needs without the map. No hook is registered
per call, so ``torch.compile`` traces the whole encoder without a graph break.

In transformers 5 the vision transformer is the ``CLIPVisionModel`` / ``SiglipVisionModel``
itself (``embeddings``, CLIP's ``pre_layrnorm``, ``encoder.layers``); a model that holds one as
``vision_model`` (``CLIPModel``, ``SiglipModel``, ``CLIPVisionModelWithProjection``) is accepted too.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import CLIPVisionModel, SiglipVisionModel

from ..ops.attention_importance import attention_importance
from ..ops.attention_importance.op import BACKENDS as IMPORTANCE_BACKENDS
from ..ops.zip_tokens import zip_tokens

VISION_MODELS = (CLIPVisionModel, SiglipVisionModel)


@dataclass(frozen=True)
class LayerOutputs:
    """What VisionZip reads from one encoder layer of ``B`` images of ``N`` tokens.

    hidden: ``[B, N, D]`` the layer's output (``hidden_states[layer]``), in the model's dtype.
    query:  ``[B, H, N, hd]`` the layer's query projections, unscaled (a view, token-major).
    key:    ``[B, H, N, hd]`` the layer's key projections (a view, token-major).
    scale:  the layer's softmax scale.
    """

    hidden: torch.Tensor
    query: torch.Tensor
    key: torch.Tensor
    scale: float


def vision_transformer(model):
    """The ``CLIPVisionModel`` or ``SiglipVisionModel`` that is ``model`` or its ``vision_model``."""
    if isinstance(model, VISION_MODELS):
        return model
    inner = getattr(model, "vision_model", None)
    if isinstance(inner, VISION_MODELS):
        return inner
    raise TypeError(
        "VisionZip encoder: expected a CLIPVisionModel or SiglipVisionModel, or a model holding "
        f"one as `vision_model`, got {type(model).__name__}"
    )


def has_cls_token(model) -> bool:
    """Whether the encoder's token 0 is a CLS token: True for CLIP, False for SigLIP."""
    return isinstance(vision_transformer(model), CLIPVisionModel)


def _heads(projection: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """``[B, N, H * hd]`` -> ``[B, H, N, hd]`` view, as the attention layer splits its heads."""
    batch, n_tokens, _ = projection.shape
    return projection.view(batch, n_tokens, heads, head_dim).transpose(1, 2)


def layer_number(layer, num_layers: int) -> int:
    """The 1-based number of the encoder layer whose output is ``hidden_states[layer]``.

    ``hidden_states`` holds the embeddings and then each of the ``num_layers`` layers' outputs, so
    ``layer`` must be ``1..num_layers`` or ``-1..-num_layers`` (index 0, the embeddings, has no
    attention). Raises ``ValueError`` otherwise.
    """
    if isinstance(layer, bool) or not isinstance(layer, int) or layer == 0 or abs(layer) > num_layers:
        raise ValueError(
            f"VisionZip encoder: the encoder has {num_layers} layers, so hidden_states[{layer!r}] is "
            f"not the output of one of them (valid: 1..{num_layers} or -1..-{num_layers}; the "
            "penultimate layer, -2, needs at least 2 layers)"
        )
    return layer % (num_layers + 1)


def run_to_layer(model, pixel_values: torch.Tensor, layer: int) -> LayerOutputs:
    """Embeddings (and CLIP's ``pre_layrnorm``), then the encoder layers up to ``hidden_states[layer]``.

    pixel_values: ``[B, C, image_size, image_size]``; layer: an index into ``hidden_states``
    (``layer_number``). The layers run with the model's attention implementation; the layers after
    ``layer``, whose outputs VisionZip never uses, are not run. That layer's queries and keys are
    its ``q_proj``/``k_proj`` of its ``layer_norm1`` output: CLIP and SigLIP layers are pre-norm,
    ``self_attn(layer_norm1(hidden))``, so these are the projections its attention computes (two
    extra projections of one layer: under ``torch.compile`` the duplicates are merged).
    """
    tower = vision_transformer(model)
    layers = tower.encoder.layers
    number = layer_number(layer, len(layers))
    hidden = tower.embeddings(pixel_values)
    if isinstance(tower, CLIPVisionModel):
        hidden = tower.pre_layrnorm(hidden)
    for encoder_layer in layers[: number - 1]:
        hidden = encoder_layer(hidden, None)
    read = layers[number - 1]
    attention = read.self_attn
    normed = read.layer_norm1(hidden)
    query, key = attention.q_proj(normed), attention.k_proj(normed)
    return LayerOutputs(
        hidden=read(hidden, None),
        query=_heads(query, attention.num_heads, attention.head_dim),
        key=_heads(key, attention.num_heads, attention.head_dim),
        scale=float(attention.scale),
    )


def run_to_penultimate(model, pixel_values: torch.Tensor) -> LayerOutputs:
    """``run_to_layer(model, pixel_values, -2)``: every layer but the last, LLaVA's feature layer."""
    return run_to_layer(model, pixel_values, -2)


def visionzip_features(
    model,
    pixel_values: torch.Tensor,
    k_dom: int,
    k_ctx: int,
    *,
    backend: str = "auto",
    layer: int = -2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionZip's tokens for a batch of images: ``(tokens [B, k_dom + k_ctx, D], dominant_idx [B, k_dom])``.

    ``zip_tokens(hidden, attention_importance(query, key, has_cls, scale), k_dom, k_ctx,
    keys=key, has_cls)`` on ``hidden_states[layer]`` (``run_to_layer``; the penultimate layer by
    default). ``backend`` is
    ``zip_tokens``'s; ``attention_importance`` runs the backend of the same name where it has one
    (``"reference"``, ``"triton"``, ``"cuda"``) and its automatic choice otherwise.
    """
    outputs = run_to_layer(model, pixel_values, layer)
    has_cls = has_cls_token(model)
    importance = attention_importance(
        outputs.query,
        outputs.key,
        has_cls,
        outputs.scale,
        backend=backend if backend in IMPORTANCE_BACKENDS.names else "auto",
    )
    return zip_tokens(outputs.hidden, importance, k_dom, k_ctx, outputs.key, has_cls, backend=backend)
