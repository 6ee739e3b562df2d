"""The Qwen2.5-VL TTFT benchmark in its tiny CPU mode, and its emulation of the published statistic.

Runs ``benchmarks/bench_qwen_vl.py --tiny`` in-process on two scenarios into a temporary directory
and checks the rows it writes (no timing is asserted); checks that the published pipeline's dense
statistic is the package's for one image and crosses images for several, as the port does.
"""
import csv
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_qwen_vl  # noqa: E402
from visionzip_kernels import attention_importance_varlen  # noqa: E402


@pytest.fixture(scope="module")
def tiny_rows(tmp_path_factory):
    results_dir = tmp_path_factory.mktemp("qwen_vl")
    threads = torch.get_num_threads()
    try:
        assert bench_qwen_vl.main(["--tiny", "--results-dir", str(results_dir),
                                   "--scenarios", "1x1024,4-prompts-mixed"]) == 0
    finally:
        torch.set_num_threads(threads)
    (path,) = results_dir.glob("qwen_vl_*_tiny.csv")
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_rows_cover_every_pipeline_and_budget(tiny_rows):
    assert {row["mode"] for row in tiny_rows} == {"tiny"}
    assert {row["scenario"] for row in tiny_rows} == {"1x1024", "4-prompts-mixed"}
    one = {(row["pipeline"], row["budget"]): row for row in tiny_rows if row["scenario"] == "1x1024"}
    assert set(one) == {("full", "all")} | {
        (pipeline, budget) for pipeline in ("published", "visionzip_kernels") for budget in ("0.65+0.05", "0.45+0.05")
    }
    assert all(row["status"] == "ok" and float(row["median_ms"]) > 0 for row in one.values())
    assert {row["rounds"] for row in one.values()} == {"2"}, "timed interleaved, in the tiny policy's rounds"
    # 112 x 112 pixels: 8 x 8 patches, 16 merged tokens; 10 + 1 and 7 + 1 kept
    assert [one[key]["visual_tokens"] for key in sorted(one)] == ["16", "8", "11", "8", "11"]


def test_the_published_port_refuses_several_prompts(tiny_rows):
    mixed = [row for row in tiny_rows if row["scenario"] == "4-prompts-mixed"]
    statuses = {(row["pipeline"], row["status"].split(":")[0]) for row in mixed}
    assert statuses == {("full", "ok"), ("visionzip_kernels", "ok"), ("published", "refused")}
    # images of 16, 12, 8 and 4 merged tokens keep 11, 8, 6 and 3 at 0.65 + 0.05
    package = {row["budget"]: row for row in mixed if row["pipeline"] == "visionzip_kernels"}
    assert package["0.65+0.05"]["visual_tokens"] == str(11 + 8 + 6 + 3)


def test_published_statistic_is_dense_over_the_packed_sequence():
    generator = torch.Generator().manual_seed(0)
    q, k = (torch.randn(44, 3, 16, generator=generator) for _ in range(2))
    one_image = torch.tensor([0, 44])
    torch.testing.assert_close(
        bench_qwen_vl.dense_packed_importance(q, k, one_image), attention_importance_varlen(q, k, one_image),
        atol=1e-5, rtol=1e-5,
    )
    two_images = torch.tensor([0, 20, 44])
    dense = bench_qwen_vl.dense_packed_importance(q, k, two_images)
    torch.testing.assert_close(dense, attention_importance_varlen(q, k, torch.tensor([0, 44])))
    assert not torch.allclose(dense, attention_importance_varlen(q, k, two_images), atol=1e-3)
