"""The ``generate`` benchmark in its tiny CPU mode: rows, tokens, table, chart; and model twins.

Runs ``benchmarks/bench_generate.py --tiny --batches 1`` once into a temporary results directory
(both models, every configuration) and checks what it wrote. No timing is asserted.
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

from bench_generate import MODELS, TINY_POLICY  # noqa: E402
from generate.models import build_model, twin  # noqa: E402
from prefill.geometry import tiny_geometries  # noqa: E402
from visionzip_kernels.integrations import apply_visionzip  # noqa: E402

GEOMETRIES = {geometry.name: geometry for geometry in tiny_geometries() if geometry.name in MODELS}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    results_dir = tmp_path_factory.mktemp("generate")
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_generate.py"), "--tiny", "--batches", "1",
         "--results-dir", str(results_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    (csv_path,) = results_dir.glob("generate_*_tiny.csv")
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return csv_path, rows, completed.stdout


def test_every_configuration_is_measured_in_interleaved_rounds(tiny_run):
    _, rows, _ = tiny_run
    assert {row["mode"] for row in rows} == {"tiny"}
    assert {row["status"] for row in rows} == {"ok"}
    measured = defaultdict(set)
    for row in rows:
        measured[(row["model"], row["config"])].add((row["budget"], row["metric"]))
        assert int(row["rounds"]) == TINY_POLICY.rounds
        assert float(row["round_min_ms"]) <= float(row["median_ms"]) <= float(row["round_max_ms"])
    for name, geometry in GEOMETRIES.items():
        budgets = [str(budget.visual_tokens(geometry.crops)) for budget in geometry.budgets]
        assert measured[(name, "full")] == {("", "ttft"), ("", "generate")}
        for config, config_budgets in (("published", budgets), ("vzk_eager", budgets),
                                       ("vzk_graphs", budgets[:1]), ("vzk_compile", budgets[:1])):
            expected = {(budget, metric) for budget in config_budgets for metric in ("ttft", "generate")}
            if config == "vzk_eager":
                expected.add((budgets[0], "ttft_again"))
            assert measured[(name, config)] == expected, (name, config)


def test_the_language_model_sees_the_budgeted_tokens_and_the_same_tokens_come_out(tiny_run):
    _, rows, _ = tiny_run
    for row in rows:
        geometry = GEOMETRIES[row["model"]]
        patches = (geometry.encoder.image_size // geometry.encoder.patch_size) ** 2
        if row["config"] == "full":  # LLaVA-1.5: every patch; LLaVA-NeXT: more than any budget
            assert row["tokens_vs_vzk_eager"] == ""
            if geometry.crops == 1:
                assert int(row["visual_tokens"]) == patches
            assert int(row["visual_tokens"]) > geometry.budgets[-1].visual_tokens(geometry.crops)
            continue
        newlines = 2 if geometry.crops > 1 else 0  # LLaVA-NeXT: a 2 x 2 grid, one newline per row
        assert int(row["visual_tokens"]) == int(row["budget"]) + newlines
        assert int(row["prompt_tokens"]) == int(row["visual_tokens"]) + geometry.system_tokens + geometry.question_tokens
        expected = "reference" if row["config"] == "vzk_eager" else "same"
        assert row["tokens_vs_vzk_eager"] == expected, (row["model"], row["config"], row["budget"])


def test_table_targets_and_chart_are_written(tiny_run):
    csv_path, _, stdout = tiny_run
    table = csv_path.with_suffix(".md").read_text()
    assert "not claims" in table
    assert "## Targets" in table and "fastest recipe" in table and "published eager" in table
    assert "timed twice in the same rounds" in table
    for name in GEOMETRIES:
        assert f"## {name} " in table
    last = stdout.rstrip().splitlines()[-1]
    assert last.startswith("| vzk_eager |") and last.endswith("| ok |")
    chart = csv_path.with_suffix(".png")
    if importlib.util.find_spec("matplotlib") is not None:
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert not chart.exists()


def test_a_twin_shares_the_weights_and_keeps_its_own_patches():
    model = build_model(GEOMETRIES["LLaVA-NeXT-7B"], torch.float32, "cpu")
    copy = twin(model, language_model=True)
    assert all(a is b for a, b in zip(copy.parameters(), model.parameters()))
    assert copy.model.vision_tower is model.model.vision_tower
    apply_visionzip(copy, dominant=3, contextual=1)
    copy.model.language_model.forward = lambda *args, **kwargs: None
    assert "get_image_features" in vars(copy.model)
    assert "get_image_features" not in vars(model.model)
    assert "forward" not in vars(model.model.language_model)
