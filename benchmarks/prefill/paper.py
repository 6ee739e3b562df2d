"""The paper's efficiency numbers that the benchmark's rows are set beside."""
from __future__ import annotations

from dataclasses import dataclass

PAPER = "VisionZip (Yang et al., CVPR 2025)"
PAPER_DEVICE = "NVIDIA A800"


@dataclass(frozen=True)
class PaperPrefill:
    """Prefill time reported in the paper for ``model`` at full tokens and at a VisionZip budget."""

    model: str
    full_tokens: int
    full_ms: float
    reduced_tokens: int
    reduced_ms: float

    @property
    def speedup(self) -> float:
        return self.full_ms / self.reduced_ms


PAPER_PREFILL = (PaperPrefill("LLaVA-NeXT-7B", 2880, 218.0, 160, 27.8),)

# The paper's claim: the larger model at its smallest budget runs faster than the smaller at full tokens.
CLAIM_FASTER_MODEL = "LLaVA-NeXT-13B"
CLAIM_SLOWER_MODEL = "LLaVA-NeXT-7B"
