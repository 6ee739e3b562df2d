"""VisionZip in Gemma 3 (``Gemma3ForConditionalGeneration``): each image keeps ``dominant +
contextual`` of its 256 soft tokens.

Gemma 3's vision front end: SigLIP (no CLS token) at 896 pixels in 14-pixel patches, 64 x 64 =
4096 patches, all its layers and ``post_layernorm``; the projector then averages 4 x 4 patches
(``AvgPool2d``) into 16 x 16 = ``mm_tokens_per_image`` = 256 tokens, normalises each (RMSNorm) and
maps it into the text width. The processor writes 256 placeholders per image, and one more block
of 256 per pan-and-scan crop (each crop is an image of its own to the model).

Where VisionZip applies: on the **256 soft tokens**, per image and per crop.

- The language model was trained on pooled tokens: a single patch is a sixteenth of a soft token's
  area and not a token the projector ever saw; the 256 pooled tokens are the natural unit, the
  processor's and the model's (budgets count them).
- Importance: the last encoder layer's attention (its output is the features), the mean over its
  queries and heads of the attention each patch receives (SigLIP has no CLS token;
  ``attention_importance(has_cls=False)``), then averaged over each soft token's 4 x 4 patches,
  the projector's own pooling. Keys: the layer's keys pooled the same way (``zip_tokens``
  averages them over heads).
- ``zip_tokens`` runs on the features the language model receives (after the projector, whose
  normalisation and linear map act on each token alone): a dominant token is exactly the stock
  model's token, a contextual token its target's stock token plus the mean of those merged into it
  (``docs/CONTRACT.md``).

The one method replaced is ``get_image_features`` of the inner ``Gemma3Model`` instance: the
model's own method runs (SDPA in every encoder layer, the projector), two forward hooks read the
last layer's ``q_proj``/``k_proj`` outputs as its attention computes them. Gemma 3's language model
numbers image tokens as text (1-D rotary positions over the sequence), so kept tokens have no
positions of their own to keep: the dominant tokens come in raster order, then the contextual ones.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from transformers import Gemma3ForConditionalGeneration, Gemma3Model
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..ops.attention_importance import attention_importance
from ..ops.attention_importance.op import BACKENDS as IMPORTANCE_BACKENDS
from ..ops.zip_tokens import zip_tokens
from .budget import Budget, count_budget
from .capture import captured_calls
from .encoder import vision_transformer
from .gemma3_processor import check_gemma3_processor, patch_gemma3_processor
from .handle import VisionZipHandle, patch_model_and_processor

MODEL_CLASSES = (Gemma3ForConditionalGeneration, Gemma3Model)
# The budget when none is given: 128 of the 256 tokens, split 108 + 20 as the paper's 128-token
# LLaVA-1.5 setting; the soft tokens already pool 16 patches each, so half is kept by default.
DEFAULT_DOMINANT, DEFAULT_CONTEXTUAL = 108, 20


@dataclass
class Gemma3ZipOutput(BaseModelOutputWithPooling):
    """The model's image output with VisionZip: ``pooler_output`` ``[n, dominant + contextual,
    D_text]`` each image's kept soft tokens, the dominant ones in ascending raster order, then the
    contextual ones; ``dominant_idx`` ``[n, dominant]`` int64 the dominant tokens' indices among
    the image's soft tokens; ``last_hidden_state`` the tower's output, every patch."""

    dominant_idx: torch.LongTensor | None = None


def pool_patch_grid(values: torch.Tensor, side: int, kernel: int) -> torch.Tensor:
    """``[B, side * side, C]`` values of a raster patch grid -> ``[B, (side / kernel)**2, C]``
    float32, the mean of each ``kernel x kernel`` block in raster order (as ``AvgPool2d``)."""
    batch, _, channels = values.shape
    grid = values.float().transpose(1, 2).reshape(batch, channels, side, side)
    return torch.nn.functional.avg_pool2d(grid, kernel).flatten(2).transpose(1, 2)


def soft_token_statistic(model, query: torch.Tensor, key: torch.Tensor, scale: float, backend: str):
    """``(importance [B, H, T], keys [B, H, T, hd])`` of the ``T`` soft tokens, from the last
    encoder layer's ``query``/``key`` ``[B, N, H * hd]`` (projections, unscaled) over ``N`` patches."""
    projector = model.multi_modal_projector
    side, kernel = projector.patches_per_image, projector.kernel_size
    attention = vision_transformer(model.vision_tower).encoder.layers[-1].self_attn
    batch, patches, _ = query.shape
    heads = attention.num_heads
    per_head = [x.view(batch, patches, heads, -1).transpose(1, 2) for x in (query, key)]
    importance_backend = backend if backend in IMPORTANCE_BACKENDS.names else "auto"
    received = attention_importance(*per_head, False, scale, backend=importance_backend)
    importance = pool_patch_grid(received.transpose(1, 2), side, kernel).transpose(1, 2)
    keys = pool_patch_grid(key, side, kernel)
    return importance, keys.view(batch, keys.shape[1], heads, -1).transpose(1, 2)


def get_image_features(model, pixel_values: torch.Tensor, *, budget: Budget, **kwargs):
    """The replacement ``Gemma3Model.get_image_features``: ``[n, 3, S, S]`` pixels (images and
    pan-and-scan crops) -> a ``Gemma3ZipOutput``. ``return_dict=False`` returns its tuple."""
    return_dict = kwargs.pop("return_dict", None)
    attention = vision_transformer(model.vision_tower).encoder.layers[-1].self_attn
    projections = {"query": attention.q_proj, "key": attention.k_proj}
    with captured_calls(projections) as captured:
        output = type(model).get_image_features(model, pixel_values, return_dict=True, **kwargs)
    importance, keys = soft_token_statistic(
        model, captured["query"], captured["key"], float(attention.scale), budget.backend
    )
    tokens, dominant_idx = zip_tokens(
        output.pooler_output, importance, budget.dominant, budget.contextual, keys, False,
        backend=budget.backend,
    )
    zipped = Gemma3ZipOutput(
        last_hidden_state=output.last_hidden_state, pooler_output=tokens, dominant_idx=dominant_idx
    )
    return zipped.to_tuple() if return_dict is False else zipped


def apply_gemma3(model, processor, dominant, contextual, backend: str) -> VisionZipHandle:
    """``apply_visionzip`` for a ``Gemma3ForConditionalGeneration`` / ``Gemma3Model``: check
    everything, then patch the inner model and the processor, or nothing.

    dominant, contextual: soft tokens kept per image (and per crop), ints; default 108 + 20.
    """
    inner = model.model if isinstance(model, Gemma3ForConditionalGeneration) else model
    vision_transformer(inner.vision_tower)  # a TypeError unless a SigLIP tower, as Gemma 3's are
    dominant = DEFAULT_DOMINANT if dominant is None else dominant
    contextual = DEFAULT_CONTEXTUAL if contextual is None else contextual
    config = inner.config
    budget = count_budget(
        dominant,
        contextual,
        config.mm_tokens_per_image,
        "Gemma 3 gives each image (config.mm_tokens_per_image)",
        backend,
        next(inner.vision_tower.parameters()).device,
    )
    if processor is not None:
        check_gemma3_processor(processor, model, config)
    methods = {"get_image_features": functools.partial(get_image_features, budget=budget)}
    return patch_model_and_processor(
        model, inner, methods, processor, lambda: patch_gemma3_processor(processor, budget), budget
    )

