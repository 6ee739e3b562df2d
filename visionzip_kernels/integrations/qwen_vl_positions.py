"""M-RoPE positions of a Qwen-VL sequence whose images hold only their kept tokens.

Qwen-VL gives each image token a 3-D position (frame, row, column, offset by the text before it) and
the text after an image continues after the image's largest row or column. With VisionZip an image
keeps ``K_i`` of its ``T_i`` tokens, and each kept token keeps its **original** position (as in the
published port). ``kept_rope_index`` gets them from the model's own ``get_rope_index``, unchanged:
each image's run of ``K_i`` placeholders is expanded back to ``T_i`` (the sequence the model would
have seen without VisionZip), the model's method computes every position, and the kept tokens'
positions are read back, with the text's. The language model's rope delta (the next position minus
the sequence length, which ``generate`` adds to later positions) is recomputed for the shorter
sequence: the largest position plus one, minus the number of tokens.

Video runs (``mm_token_type_ids == 2``) and text pass through as they are.
"""
from __future__ import annotations

import itertools
from typing import Callable

import torch

IMAGE_TYPE = 1


def expand_row(
    ids: list[int], types: list[int], kept_idx: list[list[int]], full_sizes: list[int], caller: str
) -> tuple[list[int], list[int], list[int]]:
    """One sequence's real tokens with each image run expanded to all its tokens.

    ids, types: the tokens and their ``mm_token_type_ids``; the image runs take, in order, the
    ``kept_idx`` (raster indices among ``full_sizes[i]`` tokens) of the images still to be used,
    which are popped from the front of both lists. Returns ``(full_ids, full_types, selected)``:
    the expanded sequence and, for every input token, its index in it.
    """
    full_ids: list[int] = []
    full_types: list[int] = []
    selected: list[int] = []
    for token_type, run in itertools.groupby(zip(ids, types), key=lambda pair: pair[1]):
        run_ids = [token for token, _ in run]
        start = len(full_ids)
        if token_type != IMAGE_TYPE:
            selected.extend(range(start, start + len(run_ids)))
            full_ids.extend(run_ids)
            full_types.extend([token_type] * len(run_ids))
            continue
        if not kept_idx:
            raise ValueError(f"{caller}: the sequences hold more images than `image_grid_thw` describes")
        kept, size = kept_idx.pop(0), full_sizes.pop(0)
        if len(run_ids) != len(kept):
            raise ValueError(
                f"{caller}: an image run holds {len(run_ids)} image tokens but VisionZip keeps "
                f"{len(kept)} of that image's {size}; build the prompt with the processor passed "
                "to apply_visionzip, which writes the reduced placeholder count"
            )
        selected.extend(start + index for index in kept)
        full_ids.extend([run_ids[0]] * size)
        full_types.extend([IMAGE_TYPE] * size)
    return full_ids, full_types, selected


def left_pad(rows: list[list[int]], length: int, value: int) -> list[list[int]]:
    """Each row padded on the left to ``length`` with ``value``."""
    return [[value] * (length - len(row)) + row for row in rows]


def kept_rope_index(
    get_rope_index: Callable,
    input_ids: torch.Tensor,
    mm_token_type_ids: torch.Tensor,
    image_grid_thw: torch.Tensor,
    kept_idx: list[list[int]],
    merge_size: int,
    attention_mask: torch.Tensor | None = None,
    caller: str = "VisionZip get_rope_index",
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(position_ids [3, B, L], rope_deltas [B, 1])`` of ``input_ids`` ``[B, L]`` whose image runs
    hold the kept tokens ``kept_idx`` (one list per image of ``image_grid_thw``, in order).

    get_rope_index: the model's own method (taking ``input_ids``, ``mm_token_type_ids``,
    ``image_grid_thw``, ``attention_mask`` and ``kwargs`` by keyword). Padding (``attention_mask``
    0) gets position 0, as the model gives it. Raises ``ValueError`` when an image run's length is
    not its kept count, or the runs and the images do not pair up.
    """
    full_sizes = (image_grid_thw.prod(-1) // merge_size**2).tolist()
    if len(kept_idx) != len(full_sizes):
        raise ValueError(
            f"{caller}: {len(kept_idx)} images have kept tokens but `image_grid_thw` describes "
            f"{len(full_sizes)}"
        )
    real = (
        attention_mask.bool()
        if attention_mask is not None
        else torch.ones_like(input_ids, dtype=torch.bool)
    )
    pending_kept, pending_sizes = list(kept_idx), list(full_sizes)
    rows_ids, rows_types, rows_selected = [], [], []
    for row_ids, row_types, row_real in zip(input_ids.tolist(), mm_token_type_ids.tolist(), real.tolist()):
        ids = [token for token, keep in zip(row_ids, row_real) if keep]
        types = [token for token, keep in zip(row_types, row_real) if keep]
        full_ids, full_types, selected = expand_row(ids, types, pending_kept, pending_sizes, caller)
        rows_ids.append(full_ids)
        rows_types.append(full_types)
        rows_selected.append(selected)
    if pending_kept:
        raise ValueError(
            f"{caller}: `image_grid_thw` describes {len(full_sizes)} images but the sequences hold "
            f"{len(full_sizes) - len(pending_kept)} image runs"
        )
    length = max(len(row) for row in rows_ids)
    device = input_ids.device
    full_mask = left_pad([[1] * len(row) for row in rows_ids], length, 0)
    full_positions, _ = get_rope_index(
        input_ids=torch.tensor(left_pad(rows_ids, length, 0), dtype=input_ids.dtype, device=device),
        mm_token_type_ids=torch.tensor(
            left_pad(rows_types, length, 0), dtype=mm_token_type_ids.dtype, device=device
        ),
        image_grid_thw=image_grid_thw,
        attention_mask=torch.tensor(full_mask, dtype=torch.long, device=device),
        **kwargs,
    )
    position_ids = torch.zeros(3, *input_ids.shape, dtype=full_positions.dtype, device=device)
    deltas = []
    for row, (selected, full_ids) in enumerate(zip(rows_selected, rows_ids)):
        source = torch.tensor(selected, dtype=torch.long, device=device) + (length - len(full_ids))
        kept_positions = full_positions[:, row, source]
        position_ids[:, row, real[row]] = kept_positions
        next_position = kept_positions.max() + 1 if len(selected) else torch.tensor(0, device=device)
        deltas.append(next_position - len(selected))
    return position_ids, torch.stack(deltas).reshape(-1, 1).to(device)
