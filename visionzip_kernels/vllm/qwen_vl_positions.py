"""M-RoPE positions of a Qwen-VL prompt whose images hold only VisionZip's kept tokens, in vLLM.

Hugging Face's integration (``integrations/qwen_vl_positions.py``) gives each kept token its
**original** position and the text exactly the positions it has without VisionZip: an image of
``t x h x w`` merged tokens (``t = 1`` for a still image) starting at ``s`` (the position after the
text before it) puts its token at raster ``(row, col)`` at ``(s, s + row, s + col)``, and the text
after it continues at ``s + max(t, h, w)`` (not at ``s + w``, which is right for wide images only).

vLLM computes a request's positions once, before its images are encoded, and the kept tokens are
known only after. So the positions are made in two steps:

- ``prompt_positions`` (at the request's start): the text's positions, exact; every placeholder of
  an image gets ``(s, s, s)``, its image's start.
- ``kept_positions`` (when the image's embeddings reach the language model, chunk by chunk): each
  kept token's ``(row, col)`` travels with its embedding as ``POSITION_CHANNELS`` trailing columns
  (``position_channels``) and is added to ``s``. Each coordinate is carried as two base-256 digits,
  integers below 256 that bfloat16, float16 and float32 all hold exactly (a coordinate carried as
  one number would round in bfloat16 from 257 on). The first channel of an image token's position
  stays ``s``, so updating a token twice (a request prefilled again after preemption) changes
  nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

POSITION_CHANNELS = 4
DIGIT = 256
MAX_GRID_SIDE = DIGIT * DIGIT


@dataclass(frozen=True)
class ImageRun:
    """One image's placeholders in a prompt: the run's first index and its length (the kept
    tokens), and the image's ``max(t, h, w)`` in merged tokens (how far the text after it moves)."""

    offset: int
    length: int
    longest_side: int


def prompt_positions(num_tokens: int, images: Sequence[ImageRun]) -> tuple[torch.Tensor, int]:
    """``(positions [3, num_tokens] int64, delta)`` of a prompt before its images are encoded.

    images: the prompt's image runs in order. ``delta``: the next position minus ``num_tokens``, as
    vLLM adds it to the positions of generated tokens (``kept_positions`` recomputes it, since an
    image that ends the prompt moves the largest position).
    """
    positions = torch.empty(3, num_tokens, dtype=torch.int64)
    next_position = 0
    cursor = 0
    for image in images:
        text = image.offset - cursor
        positions[:, cursor : image.offset] = torch.arange(next_position, next_position + text)
        start = next_position + text
        positions[:, image.offset : image.offset + image.length] = start
        next_position = start + image.longest_side
        cursor = image.offset + image.length
    positions[:, cursor:] = torch.arange(next_position, next_position + num_tokens - cursor)
    return positions, int(positions.max()) + 1 - num_tokens if num_tokens else 0


def position_channels(kept_idx: torch.Tensor, grid_width: int, dtype: torch.dtype) -> torch.Tensor:
    """``[K, POSITION_CHANNELS]`` of ``dtype``: the ``(row, col)`` of each kept raster index
    ``kept_idx`` ``[K]`` (int64) in a grid ``grid_width`` merged tokens wide, each as two base-256
    digits ``(high, low)``; exact in every floating dtype."""
    row, col = kept_idx // grid_width, kept_idx % grid_width
    digits = torch.stack([row // DIGIT, row % DIGIT, col // DIGIT, col % DIGIT], dim=1)
    return digits.to(dtype)


def split_position_channels(embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features [K, D], offsets [2, K] int64)``: an embedding with ``position_channels`` split
    into the features and each token's ``(row, col)``."""
    digits = embeddings[:, -POSITION_CHANNELS:].round().long()
    row = digits[:, 0] * DIGIT + digits[:, 1]
    col = digits[:, 2] * DIGIT + digits[:, 3]
    return embeddings[:, :-POSITION_CHANNELS], torch.stack([row, col])


def kept_positions(
    input_ids: Sequence[int] | torch.Tensor,
    embeddings: Sequence[torch.Tensor],
    positions: torch.Tensor,
    num_computed_tokens: int,
    image_token_id: int,
) -> tuple[list[torch.Tensor], torch.Tensor, int]:
    """``(features, positions, delta)`` once some image embeddings reach the language model.

    input_ids: the whole prompt ``[N]``; embeddings: the embedding rows of the image tokens
    scheduled now, in prompt order, each with ``position_channels``; they belong to the first
    image tokens at or after ``num_computed_tokens``. positions: ``[3, N]`` the prompt's positions
    so far (``prompt_positions``, and earlier calls). Returns the embeddings without their
    position channels, the positions with those tokens' ``(s, s + row, s + col)``, and the delta.
    """
    features, offsets = [], []
    for embedding in embeddings:
        feature, offset = split_position_channels(embedding)
        features.append(feature)
        offsets.append(offset)
    updated = positions.clone()
    if offsets:
        ids = torch.as_tensor(input_ids, device=positions.device)
        image_tokens = torch.nonzero(ids[num_computed_tokens:] == image_token_id).flatten()
        offset = torch.cat(offsets, dim=1).to(positions.device)
        tokens = image_tokens[: offset.shape[1]] + num_computed_tokens
        start = updated[0, tokens]
        updated[1, tokens] = start + offset[0]
        updated[2, tokens] = start + offset[1]
    return features, updated, int(updated.max()) + 1 - updated.shape[1]
