"""VisionZip on a Qwen-VL vision encoder: every image zipped on its own, attention kept as it is.

Shared by Qwen2.5-VL (``qwen2_5_vl.py``) and Qwen3-VL (``qwen3_vl.py``). The encoder runs exactly as
the model runs it (its own ``get_image_features``: SDPA or FlashAttention with ``cu_seqlens`` in every
block, window attention where the model has it, the patch merger, Qwen3-VL's deepstack mergers).
Two hooks on the attention of the **last** block read what VisionZip needs as the block computes
it: the rotary ``position_embeddings`` it is called with (a pre-hook) and its ``qkv`` projection (a
forward hook); the queries and keys are rotated by the model's own ``apply_rotary_pos_emb_vision``,
the very call the block makes (no second projection, no attention map). Then, per image (per
segment of the packed batch, sizes from ``image_grid_thw`` on the host):

- ``attention_importance_varlen``: the attention each patch receives from the image's queries
  (sum over queries, mean over heads), without a ``N x N`` map;
- ``pool_merge_units``: mean over each 2x2 merge unit, back in raster order (``window_index``
  undoes Qwen2.5-VL's window order); the keys are pooled the same way and averaged over heads;
- ``zip_tokens_varlen``: the dominant and contextual tokens of the merged features the language
  model receives, in raster order, each contextual token at its target's place.

Qwen3-VL's deepstack features are zipped with the same indices and merges as the main features:
they are concatenated with them along the feature axis for the one ``zip_tokens_varlen`` call (the
selection reads only the importance and the keys, and a merge is the same mean on every column),
then split again.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

import torch

from ..ops.attention_importance_varlen import attention_importance_varlen, pool_merge_units
from ..ops.attention_importance_varlen.op import BACKENDS as IMPORTANCE_BACKENDS
from ..ops.zip_tokens_varlen import zip_tokens_varlen
from ..varlen import offsets
from .budget import Budget


@dataclass(frozen=True)
class LastBlockAttention:
    """The last vision block's queries and keys, ``[N_total, H, hd]`` each, after the rotary
    embedding, in the encoder's token order (window order for Qwen2.5-VL); and its softmax scale."""

    query: torch.Tensor
    key: torch.Tensor
    scale: float


@dataclass(frozen=True)
class ZippedImages:
    """VisionZip's tokens for ``n`` images.

    features: ``n`` tensors ``[K_i, D]``, the merged features each image keeps, raster order.
    deepstack: one entry per deepstack layer (Qwen3-VL), each ``n`` tensors ``[K_i, D]`` zipped
        like ``features``; empty for Qwen2.5-VL.
    kept_idx: ``n`` int64 tensors ``[K_i]``, the ascending raster indices (among the image's
        ``T_i`` merged tokens) of the kept tokens, on the features' device.
    """

    features: tuple[torch.Tensor, ...]
    deepstack: tuple[tuple[torch.Tensor, ...], ...]
    kept_idx: tuple[torch.Tensor, ...]


@contextlib.contextmanager
def capture_last_block(visual):
    """Within the block, hooks on ``visual.blocks[-1].attn`` fill the yielded dict with
    ``"attention"``: a ``LastBlockAttention`` of the last block's forward. Removed on exit."""
    attention = visual.blocks[-1].attn
    rotate = sys.modules[type(attention).__module__].apply_rotary_pos_emb_vision
    captured: dict = {}

    def read_position_embeddings(module, args, kwargs):
        captured["position_embeddings"] = kwargs["position_embeddings"]

    def read_qkv(module, args, output):
        tokens = output.shape[0]
        query, key, _ = output.reshape(tokens, 3, attention.num_heads, -1).unbind(1)
        cos, sin = captured.pop("position_embeddings")
        query, key = rotate(query, key, cos, sin)
        captured["attention"] = LastBlockAttention(query, key, float(attention.scaling))

    handles = [
        attention.register_forward_pre_hook(read_position_embeddings, with_kwargs=True),
        attention.qkv.register_forward_hook(read_qkv),
    ]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def grid_sizes(image_grid_thw: torch.Tensor, merge_unit: int, caller: str) -> list[int]:
    """Patches per image from ``image_grid_thw`` ``[n, 3]`` (read on the host, as the model does),
    after checking every image is one frame (``t == 1``) of whole merge units."""
    sizes = []
    for index, (frames, height, width) in enumerate(image_grid_thw.tolist()):
        if frames != 1:
            raise ValueError(
                f"{caller}: image {index} has t={frames} frames in `image_grid_thw`; VisionZip "
                "zips still images (t=1) only"
            )
        if (height * width) % merge_unit:
            raise ValueError(
                f"{caller}: image {index} has {height}x{width} patches, not whole merge units of "
                f"{merge_unit}"
            )
        sizes.append(height * width)
    return sizes


def merge_unit_statistics(
    attention: LastBlockAttention,
    patch_sizes: list[int],
    merge_unit: int,
    window_index: torch.Tensor | None,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(importance [T_total], keys [T_total, hd])`` of the merged tokens, raster order, float32.

    importance: the attention each merge unit receives (``attention_importance_varlen`` per image,
    mean over the heads of ``attention`` and over the unit's patches); keys: the unit's keys, mean
    over the patches and the heads. attention: the last block's queries and keys over ``N_total =
    sum(patch_sizes)`` patches. window_index: ``[T_total]`` the raster merge unit of each unit of
    the encoder's order, or ``None`` where that order is raster. Both are means over heads, so
    where the heads are split over ranks, ``local_heads * statistic`` summed over the ranks and
    divided by the total head count is the statistic of all heads.
    """
    patch_offsets = torch.tensor(offsets(patch_sizes), dtype=torch.int64)
    importance_backend = backend if backend in IMPORTANCE_BACKENDS.names else "auto"
    received = attention_importance_varlen(
        attention.query,
        attention.key,
        patch_offsets,
        attention.scale,
        seqlens=patch_sizes,
        backend=importance_backend,
    )
    importance = pool_merge_units(received, window_index, unit=merge_unit)
    keys = pool_merge_units(attention.key, window_index, unit=merge_unit).mean(dim=1)
    return importance, keys


def zip_merged(
    importance: torch.Tensor,
    keys: torch.Tensor,
    merged: torch.Tensor,
    deepstack: list[torch.Tensor],
    sizes: list[int],
    budget: Budget,
) -> ZippedImages:
    """VisionZip on ``n`` images' merged tokens, given their ``merge_unit_statistics``.

    merged: ``[T_total, D]`` the patch merger's output in raster order, ``T_i = sizes[i]``;
    deepstack: Qwen3-VL's deepstack features, each like ``merged`` (may be empty).
    """
    widths = [merged.shape[1]] + [features.shape[1] for features in deepstack]
    hidden = torch.cat([merged, *deepstack], dim=1) if deepstack else merged
    tokens, kept_idx, _ = zip_tokens_varlen(
        hidden,
        importance,
        torch.tensor(offsets(sizes), dtype=torch.int64),
        budget.dominant,
        budget.contextual,
        keys,
        seqlens=sizes,
        backend=budget.backend,
    )
    counts = [budget.tokens_for(size) for size in sizes]
    starts = offsets(sizes)[:-1]
    kept_local = tuple(idx - start for idx, start in zip(kept_idx.split(counts), starts))
    columns = tokens.split(widths, dim=1)
    return ZippedImages(
        features=columns[0].split(counts),
        deepstack=tuple(layer.split(counts) for layer in columns[1:]),
        kept_idx=kept_local,
    )


def zip_images(
    attention: LastBlockAttention,
    merged: torch.Tensor,
    deepstack: list[torch.Tensor],
    patch_sizes: list[int],
    merge_unit: int,
    window_index: torch.Tensor | None,
    budget: Budget,
) -> ZippedImages:
    """VisionZip on the encoder's outputs for ``n`` images: ``merge_unit_statistics`` of the last
    block's ``attention``, then ``zip_merged`` of ``merged`` (``[T_total, D]``, ``T_i =
    patch_sizes[i] / merge_unit``) and ``deepstack``."""
    importance, keys = merge_unit_statistics(
        attention, patch_sizes, merge_unit, window_index, budget.backend
    )
    sizes = [size // merge_unit for size in patch_sizes]
    return zip_merged(importance, keys, merged, deepstack, sizes, budget)
