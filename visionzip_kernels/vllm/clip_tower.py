"""vLLM's CLIP vision tower run with VisionZip: pixels to the zipped tokens of its last layer.

vLLM builds a LLaVA model's CLIP tower only up to the layer the model reads its features from
(``vision_feature_layer``), so the last layer vLLM built is the penultimate layer of the
checkpoint, the one VisionZip reads; the Hugging Face integration's ``hidden_states[-2]`` would be
one layer too early here. That layer's queries and keys are its own ``qkv_proj`` of its
``layer_norm1`` output (the projections its attention computes); under tensor parallelism they
hold this rank's heads only, and ``tensor_parallel.reduce_heads`` makes the importance and the
merge keys those of all heads.
"""
from __future__ import annotations

import torch

from ..integrations.budget import Budget
from ..ops.attention_importance import attention_importance
from ..ops.attention_importance.op import BACKENDS as IMPORTANCE_BACKENDS
from ..ops.zip_tokens import zip_tokens
from .tensor_parallel import reduce_heads


def _heads(projection: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, N, h * hd]`` -> ``[B, h, N, hd]`` view, as vLLM's attention splits its heads."""
    batch, n_tokens, width = projection.shape
    return projection.view(batch, n_tokens, heads, width // heads).transpose(1, 2)


def zipped_clip_tokens(vision_tower, pixel_values: torch.Tensor, budget: Budget) -> torch.Tensor:
    """VisionZip's tokens of a batch of crops: ``[B, dominant + contextual, D]``.

    vision_tower: vLLM's ``CLIPVisionModel`` (built to the feature layer); pixel_values:
    ``[B, 3, image_size, image_size]``. The CLS token is kept among the dominant tokens, whatever
    ``vision_feature_select_strategy`` says, as in the Hugging Face integration.
    """
    transformer = vision_tower.vision_model
    hidden = transformer.pre_layrnorm(transformer.embeddings(pixel_values))
    *layers, read = transformer.encoder.layers
    for layer in layers:
        hidden = layer(hidden)
    attention = read.self_attn
    qkv, _ = attention.qkv_proj(read.layer_norm1(hidden))
    query, key, _ = qkv.chunk(3, dim=-1)
    query = _heads(query, attention.num_heads_per_partition)
    key = _heads(key, attention.num_heads_per_partition)
    importance = attention_importance(
        query,
        key,
        True,
        attention.scale,
        backend=budget.backend if budget.backend in IMPORTANCE_BACKENDS.names else "auto",
    )
    scores, keys = reduce_heads(importance, key, attention.num_heads)
    tokens, _ = zip_tokens(
        read(hidden), scores, budget.dominant, budget.contextual, keys, True, backend=budget.backend
    )
    return tokens
