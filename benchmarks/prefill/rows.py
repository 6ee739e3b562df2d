"""The benchmark's data file: row schema, file names, reading, merging and writing rows.

One CSV per device (``prefill_<device-slug>.csv``; ``..._tiny.csv`` for the CPU smoke-test mode),
one row per (model, batch, pipeline, budget, stage, CUDA graph or not). A new run replaces the rows
of the (model, batch) pairs it measured and keeps the others, so a long run can be split.
Needs neither torch nor a GPU, so reports can be made from committed rows anywhere.
"""
from __future__ import annotations

import csv
from pathlib import Path

FIELDS = (
    "mode", "device", "torch", "triton", "transformers", "cuda", "commit", "dtype", "timestamp",
    "model", "encoder", "lm", "crops", "batch", "pipeline", "budget", "k_dom", "k_ctx",
    "visual_tokens", "lm_tokens", "stage", "cuda_graph", "zip_impl", "status",
    "median_ms", "p20_ms", "p80_ms", "reps", "rounds", "round_min_ms", "round_max_ms",
    "peak_mib", "resident_mib",
)
GROUP_FIELDS = ("mode", "device", "model", "batch")
TINY = "tiny"  # toy geometries in float32 on a CPU: exercises the script, its numbers are not claims
FULL_SIZE = "full-size"  # the paper's geometries in bfloat16 on a GPU

FULL = "full"  # every visual token, LLaVA as published
PUBLISHED = "published"  # VisionZip's published code
PACKAGE = "visionzip_kernels"  # this package
PIPELINES = (FULL, PUBLISHED, PACKAGE)
STAGES = ("encoder", "zip", "projector", "lm_prefill")  # timed separately
TTFT = "ttft"  # the whole pipeline, pixels to the first token, timed together


def results_stem(results_dir: Path, device_slug: str, mode: str) -> Path:
    """``<dir>/prefill_<device_slug>`` (``_tiny`` appended in tiny mode); add ``.csv``, ``.md``, ``.png``."""
    suffix = "_tiny" if mode == TINY else ""
    return Path(results_dir) / f"prefill_{device_slug}{suffix}"


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a results CSV (``[]`` if there is none)."""
    if not Path(path).exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` without the (mode, device, model, batch) groups that ``new`` measured, then ``new``."""

    def group(row):
        return tuple(str(row[field]) for field in GROUP_FIELDS)

    measured = {group(row) for row in new}
    return [row for row in old if group(row) not in measured] + list(new)


def write_rows(path: Path, rows: list[dict], fields: tuple[str, ...] = FIELDS) -> None:
    """Writes ``rows`` with the columns ``fields``: missing values left empty, other keys dropped."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({field: "" if row.get(field) is None else row[field] for field in fields})


def number(value) -> float | None:
    """A CSV cell as a float, ``None`` where empty."""
    return None if value in (None, "") else float(value)
