"""How far a backend's ``zip_tokens`` output is from the reference, under the package's tolerances.

- Indices: the dominant indices must equal the reference's exactly.
- float32 outputs: every element within ``FLOAT32_ATOL + FLOAT32_RTOL * |reference|`` of the float32
  reference.
- float16 / bfloat16 outputs: the largest error against a float64 evaluation of the reference's
  plan may be at most twice that of the reference run entirely in the low precision.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops.zip_tokens import reference

FLOAT32_ATOL = 1e-5
FLOAT32_RTOL = 1e-5


@dataclass(frozen=True)
class Parity:
    """indices_equal: the dominant indices match exactly; max_error: largest absolute error against
    the float32 reference (float32) or the float64 evaluation (float16/bfloat16); within_tolerance:
    every value meets this module's tolerance; tolerance: that tolerance, in words."""

    indices_equal: bool
    max_error: float
    within_tolerance: bool
    tolerance: str

    @property
    def ok(self) -> bool:
        return self.indices_equal and self.within_tolerance


def compare_to_reference(tokens: torch.Tensor, dominant_idx: torch.Tensor, inputs: dict) -> Parity:
    """Compare ``(tokens, dominant_idx)`` with the reference on ``inputs`` (``zip_tokens``' keyword
    arguments: hidden, attn, k_dom, k_ctx, keys, has_cls), on the CPU."""
    cpu = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    hidden = cpu["hidden"]
    plan = reference.plan_zip(
        cpu["attn"], reference.merge_metric(hidden, cpu["keys"]), cpu["k_dom"], cpu["k_ctx"], cpu["has_cls"]
    )
    indices_equal = torch.equal(dominant_idx.cpu(), plan.dominant_idx)
    tokens = tokens.cpu()
    expected_shape = (hidden.shape[0], cpu["k_dom"] + cpu["k_ctx"], hidden.shape[2])
    if tokens.shape != expected_shape or tokens.dtype != hidden.dtype:
        return Parity(indices_equal, float("inf"), False, f"shape {expected_shape} and dtype {hidden.dtype}")
    if hidden.dtype == torch.float32:
        expected = reference.apply_zip(hidden, plan)
        error = (tokens - expected).abs()
        within = bool((error <= FLOAT32_ATOL + FLOAT32_RTOL * expected.abs()).all())
        return Parity(indices_equal, _largest(error), within, f"{FLOAT32_ATOL:g} + {FLOAT32_RTOL:g} * |ref|")
    exact = reference.apply_zip(hidden.double(), plan)
    low_precision = reference.apply_zip(hidden, plan, accum_dtype=hidden.dtype)
    error = _largest((tokens.double() - exact).abs())
    bound = 2 * _largest((low_precision.double() - exact).abs())
    return Parity(indices_equal, error, error <= bound, f"2x {str(hidden.dtype).removeprefix('torch.')} ref = {bound:.2e}")


def _largest(error: torch.Tensor) -> float:
    """Largest element, NaN counting as infinite; 0 for an empty tensor."""
    if error.numel() == 0:
        return 0.0
    return float("inf") if torch.isnan(error).any() else error.max().item()
