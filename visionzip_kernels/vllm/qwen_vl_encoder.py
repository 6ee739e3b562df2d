"""VisionZip in vLLM's Qwen2.5-VL and Qwen3-VL vision towers: each image's kept tokens.

The tower runs exactly as vLLM runs it (its attention backend, window attention, the patch merger,
Qwen3-VL's deepstack mergers, whose outputs vLLM concatenates to the merged features along the
feature axis). A pre-hook on the last block's attention kernel (``blocks[-1].attn.attn``) reads the
queries and keys it is called with, already rotated (no second projection, no attention map). Then,
as in the Hugging Face integration (``integrations/qwen_vl.py``): the attention each merge unit
receives and the units' keys (``merge_unit_statistics``), and ``zip_merged`` on every feature
column at once, so the deepstack features keep the same tokens and merges.

Tensor parallelism: with the tower split by heads (``tp_size > 1``) each rank holds
``num_attention_heads_per_partition`` heads; both statistics are head means, so they are turned
into this rank's head sums, summed over the tensor-parallel group and divided by all the heads
(``all_heads``, through ``tensor_parallel.reduce_heads``): every rank then zips the same tokens, those of TP=1. In the
data-parallel encoder mode (``mm_encoder_tp_mode="data"``) each rank holds every head of the images
it encodes; ``DataParallelZip`` runs the zip there and vLLM's sharding gathers the results.

Each image's output row is its kept token's features followed by its ``(row, col)`` position
channels (``qwen_vl_positions.position_channels``).
"""
from __future__ import annotations

import contextlib
import math

import torch

from ..integrations.budget import Budget
from ..integrations.qwen_vl import LastBlockAttention, merge_unit_statistics, zip_merged
from .qwen_vl_positions import MAX_GRID_SIDE, POSITION_CHANNELS, position_channels
from .tensor_parallel import reduce_heads


@contextlib.contextmanager
def capture_last_block(visual):
    """Within the block, the yielded dict receives ``"attention"``: a ``LastBlockAttention`` of the
    last vision block's queries and keys ``[N_total, H_local, hd]``, in the tower's token order."""
    attention = visual.blocks[-1].attn.attn
    captured: dict = {}

    def read_query_key(module, args, kwargs):
        query, key = kwargs["query"], kwargs["key"]
        captured["attention"] = LastBlockAttention(query.flatten(0, 1), key.flatten(0, 1), module.scale)

    handle = attention.register_forward_pre_hook(read_query_key, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


def check_grids(grid_thw: list[list[int]], merge_size: int) -> None:
    """Every image is one frame whose merged grid fits the position channels."""
    for index, (frames, height, width) in enumerate(grid_thw):
        if frames != 1:
            raise ValueError(f"VisionZip: image {index} has t={frames} frames; only still images are zipped")
        if max(height, width) // merge_size >= MAX_GRID_SIDE:
            raise ValueError(
                f"VisionZip: image {index} is {height}x{width} patches; its merged grid must be "
                f"under {MAX_GRID_SIDE} tokens a side"
            )


def all_heads(importance: torch.Tensor, keys: torch.Tensor, attention):
    """``merge_unit_statistics`` of this rank's heads (means over them) made those of all the
    attention's heads: each mean stands for every local head, so that ``reduce_heads`` sums this
    rank's heads, all-reduces the sums over the tensor-parallel group and divides by all heads."""
    local_heads = attention.num_attention_heads_per_partition
    total_heads = local_heads * attention.tp_size
    per_head_importance = importance.expand(1, local_heads, -1)
    per_head_keys = keys.expand(1, local_heads, -1, -1)
    scores, merge_keys = reduce_heads(per_head_importance, per_head_keys, total_heads)
    return scores[0], merge_keys[0]


def zip_encoded(visual, pixel_values: torch.Tensor, grid_thw: list[list[int]], budget: Budget):
    """Each image's VisionZip tokens with their position channels: ``n`` tensors
    ``[K_i, D + POSITION_CHANNELS]`` (``D``: the tower's output width, deepstack included).

    visual: a vLLM ``Qwen2_5_VisionTransformer`` (window order, undone with its ``window_index``)
    or ``Qwen3_VisionTransformer`` (raster order).
    """
    merge_size = visual.spatial_merge_size
    check_grids(grid_thw, merge_size)
    metadata = visual.prepare_encoder_metadata(grid_thw)
    with capture_last_block(visual) as captured:
        merged = visual(pixel_values, grid_thw, encoder_metadata=metadata)
    attention = visual.blocks[-1].attn
    patch_sizes = [math.prod(grid) for grid in grid_thw]
    merge_unit = merge_size**2
    importance, keys = merge_unit_statistics(
        captured["attention"], patch_sizes, merge_unit, metadata.get("window_index"), budget.backend
    )
    if attention.tp_size > 1:
        importance, keys = all_heads(importance, keys, attention)
    sizes = [size // merge_unit for size in patch_sizes]
    zipped = zip_merged(importance, keys, merged, [], sizes, budget)
    return tuple(
        torch.cat([features, position_channels(kept, grid[2] // merge_size, features.dtype)], dim=1)
        for features, kept, grid in zip(zipped.features, zipped.kept_idx, grid_thw)
    )


class DataParallelZip:
    """The tower as vLLM's data-parallel sharding (``run_dp_sharded_mrope_vision_model``) calls it,
    zipping on the rank that encodes: each image's output is its ``zip_encoded`` rows padded with
    zeros to the image's merged token count (the length the sharding gathers), which ``trim``
    takes off again."""

    def __init__(self, visual, budget: Budget):
        self.visual = visual
        self.budget = budget
        self.spatial_merge_size = visual.spatial_merge_size
        self.out_hidden_size = visual.out_hidden_size + POSITION_CHANNELS

    def parameters(self):
        return self.visual.parameters()

    def __call__(self, pixel_values: torch.Tensor, grid_thw: list[list[int]]) -> torch.Tensor:
        zipped = zip_encoded(self.visual, pixel_values, grid_thw, self.budget)
        padded = []
        for rows, grid in zip(zipped, grid_thw):
            size = math.prod(grid) // self.spatial_merge_size**2
            padded.append(torch.nn.functional.pad(rows, (0, 0, 0, size - rows.shape[0])))
        return torch.cat(padded)

    def trim(self, gathered, grid_thw: list[list[int]]) -> tuple[torch.Tensor, ...]:
        """The gathered per-image outputs without their padding."""
        merge_unit = self.spatial_merge_size**2
        return tuple(
            rows[: self.budget.tokens_for(math.prod(grid) // merge_unit)]
            for rows, grid in zip(gathered, grid_thw)
        )
