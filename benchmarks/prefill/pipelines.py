"""The three pipelines compared, each a chain of stages from pixels to the first token.

- ``full``: LLaVA as published: the SDPA encoder runs all layers (``output_hidden_states=True``),
  the penultimate layer's patch tokens (CLS dropped) all go to the projector and the LM.
- ``published``: VisionZip's published code: the encoder runs all layers with eager attention and
  ``output_attentions=True``, and ``published_zip_tokens`` reads ``attentions[-2]`` and the
  penultimate layer's head-averaged keys.
- ``visionzip_kernels``: this package: ``run_to_penultimate`` (SDPA everywhere, last layer not run,
  queries/keys captured), ``attention_importance`` (the CLS row without an N x N map) and the
  fused ``zip_tokens``.

Every stage maps the previous stage's output to its own; the LM stage ends at the argmax of the
first generated token's logits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from visionzip_kernels import zip_tokens
from visionzip_kernels import attention_importance
from visionzip_kernels.integrations.encoder import run_to_penultimate
from visionzip_kernels.testing.published import published_zip_tokens

from .geometry import Budget
from .models import Models
from .rows import FULL, PUBLISHED

PUBLISHED_GRAPH_BLOCKER = "boolean-mask selection (masked_select, tensor[mask]) synchronises the host"


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline; ``graph_blocker`` says why a CUDA graph cannot capture it ("" if one can)."""

    name: str
    run: Callable[[Any], Any]
    graph_blocker: str = ""


def _encoder_layers(model):
    return getattr(model, "vision_model", model).encoder.layers


def _full_encoder(model) -> Callable:
    def run(pixel_values):
        return model(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]

    return run


def published_encoder(model) -> Callable:
    """Returns ``(hidden [B, N, D], attn [B, H, N, N], metric [B, N, hd])`` of the penultimate layer."""
    key_projection = _encoder_layers(model)[-2].self_attn.k_proj
    heads = model.config.num_attention_heads

    def run(pixel_values):
        recorded = {}
        handle = key_projection.register_forward_hook(lambda _m, _i, out: recorded.setdefault("keys", out))
        try:
            outputs = model(pixel_values, output_hidden_states=True, output_attentions=True)
        finally:
            handle.remove()
        keys = recorded["keys"]
        metric = keys.view(keys.shape[0], keys.shape[1], heads, -1).mean(dim=2)
        return outputs.hidden_states[-2], outputs.attentions[-2], metric

    return run


def _package_encoder(model) -> Callable:
    def run(pixel_values):
        return run_to_penultimate(model, pixel_values)

    return run


def encoder_stage(pipeline: str, models: Models) -> Stage:
    """The encoder stage of ``pipeline`` (the same for every budget)."""
    if pipeline == FULL:
        return Stage("encoder", _full_encoder(models.encoder_sdpa))
    if pipeline == PUBLISHED:
        return Stage("encoder", published_encoder(models.encoder_eager))
    return Stage("encoder", _package_encoder(models.encoder_sdpa))


def zip_stage(pipeline: str, budget: Budget) -> Stage:
    """The selection and merge of ``pipeline`` at ``budget`` (per crop); not for ``full``."""
    k_dom, k_ctx = budget.k_dom, budget.k_ctx
    if pipeline == PUBLISHED:

        def run_published(encoded):
            hidden, attn, metric = encoded
            return published_zip_tokens(hidden, attn, k_dom, k_ctx, metric)[0]

        return Stage("zip", run_published, PUBLISHED_GRAPH_BLOCKER)

    def run_package(penultimate):
        importance = attention_importance(
            penultimate.query, penultimate.key, has_cls=True, scale=penultimate.scale
        )
        tokens, _ = zip_tokens(penultimate.hidden, importance, k_dom, k_ctx, keys=penultimate.key, has_cls=True)
        return tokens

    return Stage("zip", run_package)


def projector_stage(models: Models, batch: int) -> Stage:
    """Projects ``[B * crops, T, width]`` tokens to the LM's ``[B, crops * T, hidden]`` visual input."""
    projector = models.projector

    def run(tokens):
        projected = projector(tokens)
        return projected.reshape(batch, -1, projected.shape[-1])

    return Stage("projector", run)


def lm_prefill_stage(models: Models, system_ids: torch.Tensor, question_ids: torch.Tensor) -> Stage:
    """System prompt + visual tokens + question through the LM (KV cache kept), to the first token.

    Only the last position's logits are computed (``logits_to_keep=1``), as in generation.
    Returns the first generated token ``[B]``.
    """
    language_model = models.language_model
    embed = language_model.get_input_embeddings()

    def run(visual):
        inputs_embeds = torch.cat([embed(system_ids), visual, embed(question_ids)], dim=1)
        outputs = language_model(inputs_embeds=inputs_embeds, use_cache=True, logits_to_keep=1)
        return outputs.logits[:, -1].argmax(dim=-1)

    return Stage("lm_prefill", run)


def stages_after_encoder(
    pipeline: str, models: Models, budget: Budget | None, batch: int, system_ids, question_ids
) -> list[Stage]:
    """Zip (except for ``full``), projector and LM prefill of ``pipeline`` at ``budget``."""
    stages = [] if pipeline == FULL else [zip_stage(pipeline, budget)]
    return [*stages, projector_stage(models, batch), lm_prefill_stage(models, system_ids, question_ids)]


def run_chain(stages: list[Stage], value):
    """Runs ``stages`` in order from ``value``; returns the last output."""
    for stage in stages:
        value = stage.run(value)
    return value
