"""The Gemma TTFT benchmark in its tiny CPU mode: ``benchmarks/bench_gemma.py --tiny`` runs
in-process on one scenario per model into a temporary directory, and the rows it writes are checked
(no timing is asserted)."""
import csv
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_gemma  # noqa: E402


def test_tiny_rows_cover_both_families_every_budget_and_the_kept_counts(tmp_path):
    threads = torch.get_num_threads()
    try:
        assert bench_gemma.main(["--tiny", "--results-dir", str(tmp_path), "--scenarios", "4-images,1x280"]) == 0
    finally:
        torch.set_num_threads(threads)
    (path,) = tmp_path.glob("gemma_*_tiny.csv")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["mode"] for row in rows} == {"tiny"}
    assert all(row["status"] == "ok" and float(row["median_ms"]) > 0 for row in rows)
    counts = {(row["model"], row["scenario"], row["budget"]): int(row["visual_tokens"]) for row in rows}
    # Gemma 3: four images of 16 soft tokens keep 5 + 3 and 3 + 1 each; Gemma 4: one image of
    # 7 x 10 = 70 soft tokens keeps int(0.42 * 70) + int(0.08 * 70) = 29 + 5 and 14 + 3
    assert counts == {
        ("tiny Gemma 3", "4-images", "all"): 64,
        ("tiny Gemma 3", "4-images", "5+3"): 32,
        ("tiny Gemma 3", "4-images", "3+1"): 16,
        ("tiny Gemma 4", "1x280", "all"): 70,
        ("tiny Gemma 4", "1x280", "0.42+0.08"): 34,
        ("tiny Gemma 4", "1x280", "0.2+0.05"): 17,
    }
