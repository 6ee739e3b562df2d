"""The LLaVA-OneVision benchmarks in their CPU mode: rows, token counts and the printed table.

``benchmarks/bench_onevision.py --tiny`` (TTFT and memory, full tokens vs VisionZip) and
``benchmarks/bench_onevision_pooling.py`` (video frames zipped before or after the 2 x 2 pooling)
run in this process into a temporary directory; what they wrote is checked. No timing is asserted.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_onevision  # noqa: E402
import bench_onevision_pooling  # noqa: E402

TEXT_TOKENS = bench_onevision.SYSTEM_TOKENS + bench_onevision.QUESTION_TOKENS


def read(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def ttft_run(tmp_path_factory):
    results_dir = tmp_path_factory.mktemp("onevision")
    assert bench_onevision.main(["--tiny", "--results-dir", str(results_dir)]) == 0
    (path,) = results_dir.glob("onevision_*_tiny.csv")
    return read(path)


def test_ttft_rows_cover_every_case_and_provider(ttft_run):
    cases = {case.name: case for case in bench_onevision.tiny_setting().cases}
    assert {(row["case"], row["provider"]) for row in ttft_run} == {
        (case, provider) for case in cases for provider in bench_onevision.PROVIDERS
    }
    for row in ttft_run:
        assert row["mode"] == "tiny" and row["device"] and row["transformers"] and row["commit"]
        assert float(row["p20_ms"]) <= float(row["median_ms"]) <= float(row["p80_ms"])
        assert float(row["min_round_ms"]) <= float(row["median_ms"]) <= float(row["max_round_ms"])


def test_ttft_visual_tokens_follow_the_layout(ttft_run):
    """Image 224 x 336 in 112-pixel crops: base + 2 x 3 grid, 6 + 1 tokens per crop and a newline
    per row; video of 8 frames: 1 + 1 tokens per frame and one newline."""
    rows = {(row["case"], row["provider"]): row for row in ttft_run}
    assert int(rows["image", "visionzip_kernels"]["visual_tokens"]) == 7 * (1 + 2 * 3) + 2
    assert int(rows["image", "visionzip_kernels"]["tower_images"]) == 7
    assert int(rows["video", "visionzip_kernels"]["visual_tokens"]) == 8 * 2 + 1
    assert int(rows["video", "full"]["visual_tokens"]) == 8 * 16 + 1
    for case in ("image", "video"):
        full, zipped = rows[case, "full"], rows[case, "visionzip_kernels"]
        assert int(zipped["visual_tokens"]) < int(full["visual_tokens"])
        for row in (full, zipped):
            assert int(row["lm_tokens"]) == int(row["visual_tokens"]) + TEXT_TOKENS


def test_pooling_counts(tmp_path):
    assert bench_onevision_pooling.main(["--results-dir", str(tmp_path)]) == 0
    rows = read(tmp_path / "onevision_pooling.csv")
    geometries = bench_onevision_pooling.GEOMETRIES
    assert len(rows) == 2 * len(geometries) * len(bench_onevision_pooling.FRAMES)
    for row in rows:
        frames, tokens = int(row["frames"]), int(row["dominant"]) + int(row["contextual"])
        assert int(row["lm_tokens"]) == frames * tokens + 1 < int(row["stock_lm_tokens"])
        before = row["choice"] == "before_pooling"
        candidates = int(row["tower_tokens"]) if before else int(row["pooled_tokens"])
        assert int(row["candidates"]) == int(row["largest_budget"]) == candidates
        projected = tokens if before else int(row["tower_tokens"])
        assert int(row["projector_rows_per_frame"]) == projected
        blend = float(row["patches_per_dominant"])
        assert (blend == 1.0) if before else (blend > 1.0)
