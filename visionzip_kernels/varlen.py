"""Segments of a packed, variable-length batch: argument checks and budgets shared by the varlen ops.

A packed batch holds ``n`` segments (one per image) back to back along its first dimension;
``cu_seqlens`` ``[n + 1]`` (int32 or int64) gives their offsets, ``cu_seqlens[i]`` to
``cu_seqlens[i + 1]``. The varlen ops need the segment sizes on the host (they decide output sizes
and per-segment budgets without reading device data): ``seqlens``, a list or tuple of ``n`` ints
(``image_grid_thw``'s products divided by the merge unit, for Qwen-VL), or, where ``seqlens`` is
not given, a ``cu_seqlens`` on the CPU, which is then read. ``caller`` (the op's name) starts every
message.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

from . import checks

CU_SEQLENS_DTYPES = (torch.int32, torch.int64)


def check_cu_seqlens(cu_seqlens, device: torch.device, caller: str) -> None:
    """``cu_seqlens`` is a 1-D int32/int64 tensor of at least one entry, on the CPU or on ``device``."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"{caller}: `cu_seqlens` must be a torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in CU_SEQLENS_DTYPES:
        raise ValueError(f"{caller}: `cu_seqlens` must be int32 or int64, got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 1:
        raise ValueError(
            f"{caller}: `cu_seqlens` must be [n + 1] segment offsets, got shape {tuple(cu_seqlens.shape)}"
        )
    if cu_seqlens.device.type != "cpu" and cu_seqlens.device != device:
        raise ValueError(
            f"{caller}: `cu_seqlens` is on {cu_seqlens.device}; it must be on the CPU or on the data's "
            f"device {device}"
        )


def resolve_seqlens(
    cu_seqlens: torch.Tensor, seqlens, total: int, caller: str, read_cu_seqlens: bool = True
) -> list[int]:
    """The ``n`` segment sizes as Python ints, checked against ``cu_seqlens`` and ``total`` tokens.

    From ``seqlens`` where given (checked against ``cu_seqlens`` too where that is on the CPU, since
    that costs no synchronisation), otherwise read from a CPU ``cu_seqlens``; a ``cu_seqlens`` on a
    GPU without ``seqlens`` is refused, since reading it would wait for the device.
    ``read_cu_seqlens=False`` (fake kernels, whose tensors hold no data) never reads it.
    """
    n_segments = cu_seqlens.shape[0] - 1
    on_host = cu_seqlens.device.type == "cpu" and read_cu_seqlens
    if seqlens is None:
        if not on_host:
            raise ValueError(
                f"{caller}: `cu_seqlens` is on {cu_seqlens.device}, so the segment sizes must be given "
                "on the host as `seqlens` (a list of ints, e.g. from image_grid_thw); reading them from "
                "the device would synchronise"
            )
        offsets = cu_seqlens.tolist()
        if offsets[0] != 0:
            raise ValueError(f"{caller}: `cu_seqlens` must start at 0, got {offsets[0]}")
        sizes = [stop - start for start, stop in zip(offsets[:-1], offsets[1:])]
        if any(size < 0 for size in sizes):
            raise ValueError(f"{caller}: `cu_seqlens` must be non-decreasing, got {offsets}")
    else:
        if not isinstance(seqlens, (list, tuple)):
            raise TypeError(
                f"{caller}: `seqlens` must be a list or tuple of ints or None, got {type(seqlens).__name__}"
            )
        sizes = [checks.check_int(size, "seqlens", caller) for size in seqlens]
        if any(size < 0 for size in sizes):
            raise ValueError(f"{caller}: `seqlens` must be >= 0, got {sizes}")
        if len(sizes) != n_segments:
            raise ValueError(
                f"{caller}: `seqlens` must hold one size per segment, {n_segments} for `cu_seqlens` of "
                f"shape {tuple(cu_seqlens.shape)}, got {len(sizes)}"
            )
        if on_host:
            expected = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).tolist()
            if cu_seqlens.tolist() != expected:
                raise ValueError(
                    f"{caller}: `cu_seqlens` {cu_seqlens.tolist()} does not hold the offsets of "
                    f"`seqlens` {sizes}"
                )
    if sum(sizes) != total:
        raise ValueError(
            f"{caller}: the segments hold {sum(sizes)} tokens but the packed tensors hold {total}"
        )
    return sizes


def segment_budgets(value, name: str, sizes: list[int], at_least_one: bool, caller: str) -> list[int]:
    """Tokens per segment for a budget ``value``: an int is a count for every segment; a float is a
    fraction of each segment's size, ``int(value * size)`` (``max(..., 1)`` where ``at_least_one``),
    the published Qwen2.5-VL rounding. Bools and other types raise ``TypeError``."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{caller}: `{name}` must be an int (tokens) or a float (fraction), got bool")
    if isinstance(value, numbers.Integral):
        count = checks.check_int(value, name, caller)
        if count < 0:
            raise ValueError(f"{caller}: `{name}` must be >= 0 tokens, got {count}")
        return [count] * len(sizes)
    if isinstance(value, numbers.Real):
        fraction = float(value)
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"{caller}: `{name}` as a fraction must be in [0, 1], got {fraction}")
        floor = 1 if at_least_one else 0
        return [max(int(fraction * size), floor) for size in sizes]
    raise TypeError(
        f"{caller}: `{name}` must be an int (tokens) or a float (fraction), got {type(value).__name__}"
    )


def check_int_list(values, name: str, n_segments: int, caller: str) -> list[int]:
    """``values`` as a list of ``n_segments`` ints >= 0 (the per-segment budgets of the ``torch.ops`` op)."""
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"{caller}: `{name}` must be a list of ints, got {type(values).__name__}")
    counts = [checks.check_int(value, name, caller) for value in values]
    if len(counts) != n_segments:
        raise ValueError(f"{caller}: `{name}` must hold {n_segments} counts, one per segment, got {len(counts)}")
    if any(count < 0 for count in counts):
        raise ValueError(f"{caller}: `{name}` must be >= 0 in every segment, got {counts}")
    return counts


def offsets(counts: list[int]) -> list[int]:
    """``[0, c0, c0 + c1, ...]``: the offsets of segments of ``counts`` rows."""
    result = [0]
    for count in counts:
        result.append(result[-1] + count)
    return result


def kept_offsets(k_dom: list[int], k_ctx: list[int], device: torch.device) -> torch.Tensor:
    """``cu_kept`` ``[n + 1]`` int64 on ``device``: the output offsets of segments keeping
    ``k_dom[i] + k_ctx[i]`` tokens, built on the host and copied (no device read)."""
    counts = [n_dom + n_ctx for n_dom, n_ctx in zip(k_dom, k_ctx)]
    return torch.tensor(offsets(counts), dtype=torch.int64).to(device, non_blocking=True)
