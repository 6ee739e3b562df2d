"""VisionZip in an InternVL model: the one method of the inner model instance that is replaced.

On the inner ``InternVLModel`` (which both the model's ``forward`` and ``generate`` call),
``get_image_features`` runs the model's own method (InternViT with its attention implementation,
the layer ``vision_feature_layer``, the pixel shuffle, the projector) while two hooks read the
feature layer's queries and keys, then zips every tile (``internvl.zip_tiles``). It returns the
model's output type with ``pooler_output`` ``[tiles, K, D]``, ``K = dominant + contextual`` per
tile, and ``dominant_idx``; ``forward`` scatters the tokens into the placeholders as usual. The
language model's positions are 1-D, so a shorter sequence needs nothing else.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from transformers import InternVLForConditionalGeneration, InternVLModel, InternVLProcessor
from transformers.models.internvl.modeling_internvl import InternVLVisionModelOutputWithPooling

from ..ops.zip_tokens.op import BACKENDS
from .budget import Budget, check_backend, make_fraction_budget
from .encoder import layer_number
from .handle import VisionZipHandle, bind_methods
from .internvl import capture_queries_keys, feature_layer_attention, tile_tokens, zip_tiles
from .internvl_processor import patch_internvl_processor
from .processor import check_processor

MODEL_CLASSES = (InternVLForConditionalGeneration, InternVLModel)
CALLER = "VisionZip get_image_features (InternVL)"


@dataclass
class InternVLZipOutput(InternVLVisionModelOutputWithPooling):
    """The model's image output with VisionZip: ``pooler_output`` ``[tiles, K, D]`` holds each
    tile's kept tokens (the dominant ones in raster order, then the contextual ones),
    ``dominant_idx`` ``[tiles, dominant]`` int64 the dominant tokens' indices among the tile's
    ``T`` tokens; the other fields are the encoder's."""

    dominant_idx: torch.LongTensor | None = None


def check_feature_layer(layer, config, caller: str) -> int:
    """``layer`` (``vision_feature_layer``) as an int naming one vision layer's output, or a
    ``ValueError``: VisionZip reads one layer's attention."""
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise ValueError(
            f"{caller}: `vision_feature_layer` must be one layer (an int), got {layer!r}; VisionZip "
            "ranks the tokens by that layer's CLS attention"
        )
    layer_number(layer, config.vision_config.num_hidden_layers)
    return layer


def check_select_strategy(strategy, caller: str) -> None:
    if strategy != "default":
        raise ValueError(
            f"{caller}: `vision_feature_select_strategy` must be 'default' (the CLS token dropped "
            f"before the pixel shuffle, as InternVL does), got {strategy!r}"
        )


def get_image_features(
    inner,
    pixel_values,
    vision_feature_layer=None,
    vision_feature_select_strategy=None,
    *,
    budget: Budget,
    **kwargs,
):
    """The replacement ``get_image_features``: the model's own, then every tile zipped.

    ``pixel_values`` ``[tiles, 3, size, size]``; the layer and strategy default to the config's, as
    in the model. ``return_dict=False`` returns the output's tuple.
    """
    config = inner.config
    layer = config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
    strategy = (
        config.vision_feature_select_strategy
        if vision_feature_select_strategy is None
        else vision_feature_select_strategy
    )
    layer = check_feature_layer(layer, config, CALLER)
    check_select_strategy(strategy, CALLER)
    return_dict = kwargs.pop("return_dict", None)
    attention = feature_layer_attention(inner, layer)
    with capture_queries_keys(attention) as captured:
        output = type(inner).get_image_features(
            inner,
            pixel_values,
            vision_feature_layer=layer,
            vision_feature_select_strategy=strategy,
            return_dict=True,
            **kwargs,
        )
    tokens, dominant_idx = zip_tiles(
        inner, output.pooler_output, captured["query"], captured["key"], attention, budget
    )
    fields = dict(output.items())
    fields.update(pooler_output=tokens, dominant_idx=dominant_idx)
    zipped = InternVLZipOutput(**fields)
    return zipped.to_tuple() if return_dict is False else zipped


def tile_budget(inner, dominant, contextual, backend: str) -> Budget:
    """The per-tile ``Budget`` (ints), or a clear error.

    dominant, contextual: an int (tokens per tile) or a float in ``[0, 1]`` (fraction of a tile's
    ``T`` tokens, rounded as for Qwen-VL: ``int(f T)``, contextual ``max(int(f T), 1)``). Raises
    ``TypeError`` for another type, ``ValueError`` for fewer than one dominant token or more than
    ``T`` in all, or a ``zip_tokens`` backend that cannot run where the model is.
    """
    device = next(inner.vision_tower.parameters()).device
    fractions = make_fraction_budget(dominant, contextual, "auto", device)
    tokens = tile_tokens(inner.config)
    k_dom, k_ctx = fractions.counts(tokens)
    if k_dom < 1:
        raise ValueError(
            f"apply_visionzip: `dominant` must keep at least one token of a tile's {tokens}, got "
            f"{dominant!r} (0 tokens)"
        )
    check_backend(BACKENDS, backend, device)
    return Budget(k_dom, k_ctx, backend)


def apply_internvl(model, processor, dominant, contextual, backend: str) -> VisionZipHandle:
    """``apply_visionzip`` for an ``InternVLForConditionalGeneration`` / ``InternVLModel``: check
    everything, then patch the inner model and the processor, or nothing."""
    inner = model.model if isinstance(model, InternVLForConditionalGeneration) else model
    check_feature_layer(inner.config.vision_feature_layer, inner.config, "apply_visionzip")
    check_select_strategy(inner.config.vision_feature_select_strategy, "apply_visionzip")
    budget = tile_budget(inner, dominant, contextual, backend)
    if processor is not None:
        check_processor(processor, InternVLProcessor, model, inner.config)
        tokens = tile_tokens(inner.config)
        if processor.image_seq_length != tokens:
            raise ValueError(
                f"apply_visionzip: `processor` writes {processor.image_seq_length} tokens per tile "
                f"(image_seq_length) but the model's tiles have {tokens} (is VisionZip already "
                "applied to it? call `.remove()` on that handle first)"
            )
    methods = {"get_image_features": functools.partial(get_image_features, budget=budget)}
    patches = bind_methods(inner, methods, owner_arg="model")
    if processor is not None:
        patches += patch_internvl_processor(processor, budget)
    return VisionZipHandle(model, processor, budget, patches)
