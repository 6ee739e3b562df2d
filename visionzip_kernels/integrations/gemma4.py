"""VisionZip in Gemma 4 (``Gemma4ForConditionalGeneration``): each image keeps a share of its soft
tokens (``0.42 + 0.08`` of them by default).

Gemma 4's vision front end: its own encoder over an image's patches at the image's own aspect ratio
and size (up to ``max_soft_tokens * k**2`` patches, ``k = pooling_kernel_size`` = 3; the patch
sequences of a batch are padded to that length, padded patches at position ``(-1, -1)`` and masked
out of the attention), 2-D rotary embeddings on each layer's normalised queries and keys, attention
with ``scaling=1.0``; the pooler averages each ``k x k`` block of patches **by their positions**
into one soft token (raster order of the pooled grid), drops padding, and ``embed_vision`` maps each
soft token into the text width. The processor writes ``num_soft_tokens_per_image`` placeholders per
image (at most ``max_soft_tokens``: 70, 140, 280, 560 or 1120).

Where VisionZip applies: on each image's **soft tokens**, as for Gemma 3 (``gemma3.py``), and for the
same reasons: they are what the language model was trained on and what the processor counts.

- Importance: the last encoder layer's attention, from its queries and keys as it computes them
  (after ``q_norm``/``k_norm`` and the 2-D rotary embedding, read through hooks; softmax scale 1.0,
  the layer's ``scaling``), each image on its own over its real patches only (the padding the
  layer masks out is left out: ``attention_importance_varlen`` over the packed real patches), then
  averaged over each soft token's ``k x k`` patches, grouped by position as the pooler groups them.
  Keys: pooled the same way, averaged over heads.
- ``zip_tokens_varlen`` runs per image on the features the language model receives (after
  ``embed_vision``, which acts on each token alone): dominant tokens are the stock model's tokens,
  contextual tokens the stock tokens they merge, averaged and added to their target (the contract's
  rule); kept tokens in raster order of the pooled grid.
- Budget: images have different numbers of soft tokens, so a float is a fraction of each image's
  (rounded as for Qwen-VL: ``int(f T)`` dominant, ``max(int(f T), 1)`` contextual), an int a count
  per image. The default, ``0.42 + 0.08``, keeps half of each image's tokens split as Gemma 3's
  default (108 + 20 of 256).

The one method replaced is ``get_image_features`` of the inner ``Gemma4Model`` instance; the
model's own method runs (SDPA in every encoder layer, pooling, ``embed_vision``). Gemma 4's language
model numbers image tokens as text (1-D positions over the sequence): kept tokens have no positions
of their own to keep. Videos (``get_video_features``) and audio are left as they are.
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

import torch
from transformers import Gemma4ForConditionalGeneration, Gemma4Model
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..ops.attention_importance_varlen import attention_importance_varlen
from ..ops.attention_importance_varlen.op import BACKENDS as IMPORTANCE_BACKENDS
from ..ops.zip_tokens_varlen import zip_tokens_varlen
from ..varlen import offsets
from .budget import Budget, make_fraction_budget
from .capture import captured_calls
from .gemma4_processor import check_gemma4_processor, patch_gemma4_processor
from .handle import VisionZipHandle, patch_model_and_processor

MODEL_CLASSES = (Gemma4ForConditionalGeneration, Gemma4Model)
# Half of each image's soft tokens, split as Gemma 3's default 108 + 20 of 256.
DEFAULT_DOMINANT, DEFAULT_CONTEXTUAL = 0.42, 0.08


@dataclass
class Gemma4ZipOutput(BaseModelOutputWithPooling):
    """The model's image output with VisionZip: ``pooler_output`` holds each image's kept soft
    tokens ``[K_i, D_text]`` (raster order of its pooled grid), ``kept_idx`` their ``[K_i]`` int64
    indices among the image's ``T_i`` soft tokens; ``last_hidden_state`` is the tower's, every soft
    token of every image."""

    kept_idx: tuple[torch.Tensor, ...] | None = None


def rotated_projections(attention, captured: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The last layer's queries and keys ``[B, P, H, hd]`` as its attention uses them: its
    ``q_norm``/``k_norm`` outputs turned by the model's own ``apply_multidimensional_rope`` with the
    rotary tables and patch positions the layer was called with (keys repeated per query head)."""
    rope = sys.modules[type(attention).__module__].apply_multidimensional_rope
    call = captured["call"]
    cos, sin = call["position_embeddings"]
    query, key = (rope(captured[name], cos, sin, call["position_ids"]) for name in ("query", "key"))
    return query, key.repeat_interleave(attention.num_key_value_groups, dim=2)


def soft_token_index(image_position_ids: torch.Tensor, real: torch.Tensor, kernel: int, soft_offsets):
    """``[P_real]`` int64: the soft token (counted over the batch) each real patch is pooled into.

    image_position_ids: ``[B, P, 2]`` patch ``(x, y)`` positions, ``-1`` for padding; real: ``[B,
    P]`` the real patches; soft_offsets: ``[B]`` each image's first soft token. Within an image,
    the patch at ``(x, y)`` goes to ``x // k + (W // k) * (y // k)``, ``W`` the image's width in
    patches: the pooler's raster order of ``k x k`` blocks.
    """
    width = image_position_ids[..., 0].amax(dim=1, keepdim=True) + 1
    block = torch.div(image_position_ids.clamp(min=0), kernel, rounding_mode="floor")
    local = block[..., 0] + torch.div(width, kernel, rounding_mode="floor") * block[..., 1]
    return (local + soft_offsets[:, None])[real]


def pool_by_index(values: torch.Tensor, index: torch.Tensor, size: int, kernel: int) -> torch.Tensor:
    """``[P_real, ...]`` -> ``[size, ...]`` float32: the mean of the ``kernel**2`` rows of each index."""
    pooled = values.new_zeros((size, *values.shape[1:]), dtype=torch.float32)
    return pooled.index_add_(0, index, values.float()).div_(kernel * kernel)


def zip_soft_tokens(model, pixel_values, image_position_ids, budget: Budget, kwargs: dict) -> Gemma4ZipOutput:
    """The stock ``get_image_features`` with each image's soft tokens zipped (module docstring)."""
    attention = model.vision_tower.encoder.layers[-1].self_attn
    hooked = {"query": attention.q_norm, "key": attention.k_norm}
    with captured_calls(hooked, {"call": attention}) as captured:
        output = type(model).get_image_features(
            model, pixel_values, image_position_ids, return_dict=True, **kwargs
        )
    query, key = rotated_projections(attention, captured)
    kernel = model.config.vision_config.pooling_kernel_size
    real = (image_position_ids != -1).all(dim=-1)
    patch_sizes = real.sum(dim=-1).tolist()  # host sizes, as the stock method reads them
    soft_sizes = [size // kernel**2 for size in patch_sizes]
    importance_backend = budget.backend if budget.backend in IMPORTANCE_BACKENDS.names else "auto"
    received = attention_importance_varlen(
        query[real],
        key[real],
        torch.tensor(offsets(patch_sizes), dtype=torch.int64),
        float(attention.scaling),
        seqlens=patch_sizes,
        backend=importance_backend,
    )
    soft_offsets = torch.tensor(offsets(soft_sizes)[:-1], dtype=torch.int64, device=real.device)
    index = soft_token_index(image_position_ids, real, kernel, soft_offsets)
    total = sum(soft_sizes)
    importance = pool_by_index(received, index, total, kernel)
    keys = pool_by_index(key[real], index, total, kernel).mean(dim=1)
    tokens, kept_idx, _ = zip_tokens_varlen(
        torch.cat(output.pooler_output),
        importance,
        torch.tensor(offsets(soft_sizes), dtype=torch.int64),
        budget.dominant,
        budget.contextual,
        keys,
        seqlens=soft_sizes,
        backend=budget.backend,
    )
    counts = [budget.tokens_for(size) for size in soft_sizes]
    kept_local = tuple(idx - start for idx, start in zip(kept_idx.split(counts), offsets(soft_sizes)))
    return Gemma4ZipOutput(
        last_hidden_state=output.last_hidden_state, pooler_output=tokens.split(counts), kept_idx=kept_local
    )


def get_image_features(model, pixel_values, image_position_ids=None, *, budget: Budget, **kwargs):
    """The replacement ``Gemma4Model.get_image_features``: ``[B, P, 3 * p**2]`` patches and their
    ``[B, P, 2]`` positions -> a ``Gemma4ZipOutput``. ``return_dict=False`` returns its tuple."""
    if image_position_ids is None:
        raise ValueError(
            "VisionZip get_image_features (Gemma 4): `image_position_ids` is required with "
            "`pixel_values` (the image processor returns it)"
        )
    return_dict = kwargs.pop("return_dict", None)
    output = zip_soft_tokens(model, pixel_values, image_position_ids, budget, kwargs)
    return output.to_tuple() if return_dict is False else output


def apply_gemma4(model, processor, dominant, contextual, backend: str) -> VisionZipHandle:
    """``apply_visionzip`` for a ``Gemma4ForConditionalGeneration`` / ``Gemma4Model``: check
    everything, then patch the inner model and the processor, or nothing.

    dominant, contextual: each a float (fraction of each image's soft tokens) or an int (soft
    tokens per image); default ``0.42 + 0.08``.
    """
    inner = model.model if isinstance(model, Gemma4ForConditionalGeneration) else model
    if inner.vision_tower is None:
        raise TypeError("apply_visionzip: this Gemma 4 model has no vision tower (vision_config is None)")
    dominant = DEFAULT_DOMINANT if dominant is None else dominant
    contextual = DEFAULT_CONTEXTUAL if contextual is None else contextual
    budget = make_fraction_budget(dominant, contextual, backend, next(inner.vision_tower.parameters()).device)
    if processor is not None:
        check_gemma4_processor(processor, model, inner.config, budget)
    methods = {"get_image_features": functools.partial(get_image_features, budget=budget)}
    return patch_model_and_processor(
        model, inner, methods, processor, lambda: patch_gemma4_processor(processor, budget), budget
    )
