"""The end-to-end prefill benchmark in its tiny CPU mode: rows, table, chart and visual-token counts.

Runs ``benchmarks/bench_prefill.py --tiny`` once into a temporary results directory, then checks
what it wrote and what ``benchmarks/results_readme.py`` makes of it; and checks that the three
pipelines it times read the same penultimate layer. No timing is asserted.
"""
import csv
import importlib.util
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from prefill.geometry import tiny_geometries  # noqa: E402
from prefill.models import build_models  # noqa: E402
from prefill.pipelines import encoder_stage, run_chain, zip_stage  # noqa: E402
from prefill.rows import read_rows  # noqa: E402
from prefill.timing import TINY_POLICY  # noqa: E402

PIPELINES = {"full", "published", "visionzip_kernels"}
FULL_STAGES = {"encoder", "projector", "lm_prefill", "ttft"}
BUDGET_STAGES = {"zip", "projector", "lm_prefill", "ttft"}


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    results_dir = tmp_path_factory.mktemp("prefill")
    completed = run_script("bench_prefill.py", "--tiny", "--results-dir", str(results_dir))
    (csv_path,) = results_dir.glob("prefill_*_tiny.csv")
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return results_dir, csv_path, rows, completed.stdout


def test_rows_are_tiny_and_measured(tiny_run):
    _, _, rows, _ = tiny_run
    assert rows
    assert {row["mode"] for row in rows} == {"tiny"}
    assert {row["status"] for row in rows} == {"ok"}
    assert {row["cuda_graph"] for row in rows} == {"no"}
    for row in rows:
        assert float(row["p20_ms"]) <= float(row["median_ms"]) <= float(row["p80_ms"])
        assert float(row["round_min_ms"]) <= float(row["median_ms"]) <= float(row["round_max_ms"])
        assert int(row["rounds"]) == TINY_POLICY.rounds, "every measurement is timed in interleaved rounds"
        assert row["device"] and row["torch"] and row["transformers"] and row["commit"]


def test_every_pipeline_has_its_stages(tiny_run):
    _, _, rows, _ = tiny_run
    stages = defaultdict(set)
    for row in rows:
        stages[(row["model"], row["batch"], row["pipeline"], row["budget"])].add(row["stage"])
    for geometry in tiny_geometries():
        for batch in geometry.batches:
            key = (geometry.name, str(batch))
            assert stages[(*key, "full", str(geometry.full_tokens))] == FULL_STAGES
            for pipeline in PIPELINES - {"full"}:
                assert stages[(*key, pipeline, "")] == {"encoder"}
                for budget in geometry.budgets:
                    assert stages[(*key, pipeline, str(budget.visual_tokens(geometry.crops)))] == BUDGET_STAGES


def test_visual_token_counts_follow_the_budgets(tiny_run):
    _, _, rows, _ = tiny_run
    geometries = {geometry.name: geometry for geometry in tiny_geometries()}
    measured = defaultdict(set)
    for row in rows:
        if row["visual_tokens"] == "":
            continue
        geometry = geometries[row["model"]]
        prompt = geometry.system_tokens + geometry.question_tokens
        assert int(row["visual_tokens"]) == int(row["budget"])
        assert int(row["lm_tokens"]) == int(row["visual_tokens"]) + prompt
        if row["pipeline"] == "full":
            assert int(row["visual_tokens"]) == geometry.crops * (geometry.encoder.tokens - 1)
        else:
            per_crop = int(row["k_dom"]) + int(row["k_ctx"])
            assert int(row["visual_tokens"]) == geometry.crops * per_crop
        measured[(row["model"], row["pipeline"])].add(int(row["visual_tokens"]))
    for name, geometry in geometries.items():
        budgets = {budget.visual_tokens(geometry.crops) for budget in geometry.budgets}
        assert measured[(name, "full")] == {geometry.full_tokens}
        assert measured[(name, "published")] == budgets
        assert measured[(name, "visionzip_kernels")] == budgets


def test_table_and_chart_are_written(tiny_run):
    results_dir, csv_path, _, stdout = tiny_run
    table = csv_path.with_suffix(".md").read_text()
    assert "not claims" in table
    assert "| pipeline | visual tokens | encoder | zip | projector | LM prefill |" in table
    for geometry in tiny_geometries():
        assert f"## {geometry.name} " in table
    assert stdout.rstrip().splitlines()[-1].startswith("| visionzip_kernels |")
    chart = csv_path.with_suffix(".png")
    if importlib.util.find_spec("matplotlib") is not None:
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert not chart.exists()


def test_results_section_keeps_tiny_rows_out_of_claims(tiny_run):
    results_dir, _, _, _ = tiny_run
    default = run_script("results_readme.py", "--results-dir", str(results_dir)).stdout
    assert "End-to-end prefill" in default
    assert "No GPU measurement is committed yet" in default
    assert "tiny-mode rows" in default and "### " not in default
    labelled = run_script("results_readme.py", "--results-dir", str(results_dir), "--include-tiny").stdout
    assert "tiny mode" in labelled and "not claims" in labelled
    assert "| LLaVA-NeXT-13B |" in labelled


def test_pipelines_compare_one_computation():
    """With shared weights, full sees the package's penultimate patch tokens, and the published
    and package pipelines hand the projector the same tokens at every budget."""
    geometry = tiny_geometries()[2]  # LLaVA-NeXT-7B: 5 crops per image
    models = build_models(geometry, torch.float32, "cpu")
    models.encoder_eager.load_state_dict(models.encoder_sdpa.state_dict())
    size = geometry.encoder.image_size
    pixels = torch.randn(2 * geometry.crops, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        full = encoder_stage("full", models).run(pixels)
        penultimate = encoder_stage("visionzip_kernels", models).run(pixels)
        torch.testing.assert_close(full, penultimate.hidden[:, 1:])
        for budget in geometry.budgets:
            tokens = {
                pipeline: run_chain([encoder_stage(pipeline, models), zip_stage(pipeline, budget)], pixels)
                for pipeline in ("published", "visionzip_kernels")
            }
            expected_shape = (2 * geometry.crops, budget.k_dom + budget.k_ctx, geometry.encoder.width)
            assert tokens["visionzip_kernels"].shape == expected_shape
            torch.testing.assert_close(tokens["visionzip_kernels"], tokens["published"], rtol=1e-5, atol=1e-5)


def test_the_committed_reports_are_what_the_script_writes_from_the_committed_rows(tmp_path):
    """``--report-only`` rewrites the table and the chart from the rows alone; the committed table
    is exactly what it writes today (the chart, a PNG, is only checked to be written)."""
    import bench_prefill

    committed = sorted((BENCHMARKS / "results").glob("prefill_*.csv"))
    assert committed
    for csv_path in committed:
        (tmp_path / csv_path.name).write_bytes(csv_path.read_bytes())
    assert bench_prefill.main(["--report-only", "--results-dir", str(tmp_path)]) == 0
    for csv_path in committed:
        written = tmp_path / csv_path.with_suffix(".md").name
        assert written.read_text() == csv_path.with_suffix(".md").read_text(), csv_path.name
        assert tmp_path.joinpath(csv_path.with_suffix(".png").name).stat().st_size > 0
    with pytest.raises(SystemExit):
        bench_prefill.main(["--report-only"])  # no rows to read


def test_the_readme_holds_the_results_script_output_from_the_committed_rows():
    import results_readme

    readme = (REPO / "README.md").read_text()
    start = readme.index("<!-- prefill results: python benchmarks/results_readme.py -->\n")
    block = readme[readme.index("\n", start) + 1: readme.index("<!-- end of the prefill results -->")]
    rows = [row for path in sorted((BENCHMARKS / "results").glob("prefill_*.csv")) for row in read_rows(path)]
    assert block.strip() == results_readme.render(rows, include_tiny=False).strip()
