"""The Qwen3.5 / InternVL TTFT benchmark in its tiny CPU mode.

Runs ``benchmarks/bench_qwen3_5_internvl.py --tiny`` in-process into a temporary directory and
checks the rows it writes (no timing is asserted).
"""
import csv
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_qwen3_5_internvl  # noqa: E402


@pytest.fixture(scope="module")
def tiny_rows(tmp_path_factory):
    results_dir = tmp_path_factory.mktemp("qwen3_5_internvl")
    threads = torch.get_num_threads()
    try:
        assert bench_qwen3_5_internvl.main(["--tiny", "--results-dir", str(results_dir)]) == 0
    finally:
        torch.set_num_threads(threads)
    (path,) = results_dir.glob("qwen3_5_internvl_*_tiny.csv")
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def visual_tokens(rows, model: str, scenario: str) -> dict:
    return {
        (row["pipeline"], row["budget"]): int(row["visual_tokens"])
        for row in rows
        if (row["model"], row["scenario"]) == (model, scenario)
    }


def test_every_row_ran_and_was_timed_interleaved(tiny_rows):
    assert {row["mode"] for row in tiny_rows} == {"tiny"}
    assert {(row["model"], row["scenario"]) for row in tiny_rows} == {
        ("Qwen3.5-9B", "1x1024"), ("Qwen3.5-9B", "4x1024"),
        ("InternVL3-8B", "1x896x1344"), ("InternVL3-8B", "4x448"),
    }
    assert all(row["status"] == "ok" and float(row["median_ms"]) > 0 for row in tiny_rows)
    assert {row["rounds"] for row in tiny_rows} == {"2"}, "timed interleaved, in the tiny policy's rounds"


def test_qwen3_5_rows_keep_each_images_share(tiny_rows):
    # 128 x 128 pixels: 8 x 8 patches of 16 pixels, 16 merged tokens; 10 + 1 and 7 + 1 kept
    assert visual_tokens(tiny_rows, "Qwen3.5-9B", "1x1024") == {
        ("full", "all"): 16,
        ("published", "0.65+0.05"): 11, ("visionzip_kernels", "0.65+0.05"): 11,
        ("published", "0.45+0.05"): 8, ("visionzip_kernels", "0.45+0.05"): 8,
    }


def test_internvl_rows_keep_each_tiles_share(tiny_rows):
    # 128 x 192 pixels: 2 x 3 tiles of 64 and the thumbnail, 16 tokens each; 10 + 1 and 7 + 1 kept
    assert visual_tokens(tiny_rows, "InternVL3-8B", "1x896x1344") == {
        ("full", "all"): 7 * 16, ("visionzip_kernels", "0.65+0.05"): 7 * 11, ("visionzip_kernels", "0.45+0.05"): 7 * 8,
    }
    assert visual_tokens(tiny_rows, "InternVL3-8B", "4x448")[("visionzip_kernels", "0.65+0.05")] == 4 * 11
