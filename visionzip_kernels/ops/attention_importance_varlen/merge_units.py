"""Qwen-VL's 2x2 merge units: pool per-patch statistics into one row per merged token, in raster order.

Qwen2.5-VL's vision encoder runs on ``N = 4T`` patches, four consecutive patches forming one 2x2
merge unit (one token for the language model), with the units permuted into window order by
``window_index`` ``[T]`` (unit ``w`` of the sequence is raster unit ``window_index[w]``); Qwen3-VL
keeps the raster order (no ``window_index``). The published VisionZip port pools the last block's
statistics per unit and puts them back in raster order:

    attn_mean = pool_merge_units(attention_importance_varlen(q, k, cu_seqlens), window_index)
    attn_key  = pool_merge_units(k, window_index).mean(dim=1)        # k [N, H, hd] -> [T, hd]

(``cu_seqlens`` here counts patches, ``4 x`` the merged tokens' offsets.)
"""
from __future__ import annotations

import torch

from ... import checks

CALLER = "pool_merge_units"


def pool_merge_units(
    x: torch.Tensor, window_index: torch.Tensor | None = None, unit: int = 4
) -> torch.Tensor:
    """Mean of every ``unit`` consecutive rows of ``x``, rows put back in raster order.

    x: ``[N, ...]`` float32, float16 or bfloat16 with ``N`` a multiple of ``unit``; window_index:
    ``None`` (the rows are in raster order already) or ``[N / unit]`` integer, the raster unit of
    each unit of ``x`` (a permutation; not checked, as that would read device data). Returns
    ``[N / unit, ...]`` float32: ``out[window_index[w]] = mean(x[unit*w : unit*(w+1)])``, the
    unit's rows summed in order in float32 and divided by ``unit``.
    """
    checks.check_float_tensor(x, "x", CALLER, {rank: "[N, ...]" for rank in range(1, 9)})
    unit = checks.check_int(unit, "unit", CALLER)
    if unit < 1:
        raise ValueError(f"{CALLER}: `unit` must be >= 1, got {unit}")
    if x.shape[0] % unit:
        raise ValueError(f"{CALLER}: `x` must have a multiple of unit={unit} rows, got shape {tuple(x.shape)}")
    n_units = x.shape[0] // unit
    if window_index is not None:
        if not isinstance(window_index, torch.Tensor):
            raise TypeError(
                f"{CALLER}: `window_index` must be a torch.Tensor or None, got {type(window_index).__name__}"
            )
        if window_index.dtype.is_floating_point or window_index.dtype.is_complex or window_index.dtype == torch.bool:
            raise ValueError(f"{CALLER}: `window_index` must be an integer tensor, got {window_index.dtype}")
        if window_index.shape != (n_units,):
            raise ValueError(
                f"{CALLER}: `window_index` must be [N / unit] = [{n_units}], got shape {tuple(window_index.shape)}"
            )
    grouped = x.reshape(n_units, unit, *x.shape[1:])
    pooled = grouped[:, 0].float()
    for member in range(1, unit):
        pooled = pooled + grouped[:, member].float()
    pooled = pooled / unit
    if window_index is None:
        return pooled
    raster = torch.empty_like(pooled)
    raster[window_index.to(device=x.device, dtype=torch.int64)] = pooled
    return raster
