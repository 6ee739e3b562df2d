"""The ``generate`` benchmark's data file: its columns and file name.

One CSV per device (``generate_<device-slug>.csv``; ``..._tiny.csv`` for the CPU smoke-test
mode), one row per (model, batch, config, budget, metric). Reading, merging (a new run replaces
the (model, batch) pairs it measured) and writing are ``prefill/rows.py``'s.
"""
from __future__ import annotations

from pathlib import Path

from prefill.rows import TINY

FIELDS = (
    "mode", "device", "torch", "triton", "transformers", "cuda", "commit", "dtype", "timestamp",
    "model", "encoder", "lm", "crops", "batch", "config", "recipe", "budget", "k_dom", "k_ctx",
    "visual_tokens", "prompt_tokens", "metric", "new_tokens", "status", "tokens_vs_vzk_eager",
    "median_ms", "p20_ms", "p80_ms", "reps", "rounds", "round_min_ms", "round_max_ms",
)
TTFT = "ttft"  # generate(max_new_tokens=1): time to the first token
GENERATE = "generate"  # generate(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
TTFT_AGAIN = "ttft_again"  # vzk_eager's TTFT at the smallest budget timed a second time, same rounds


def results_stem(results_dir: Path, device_slug: str, mode: str) -> Path:
    """``<dir>/generate_<device_slug>`` (``_tiny`` appended in tiny mode); add ``.csv``, ``.md``, ``.png``."""
    suffix = "_tiny" if mode == TINY else ""
    return Path(results_dir) / f"generate_{device_slug}{suffix}"
