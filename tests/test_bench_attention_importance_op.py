"""The per-backend benchmark of attention_importance, in a small CPU run: rows, table, inputs.
No timing is asserted."""
import csv
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_attention_importance_op as bench  # noqa: E402


def test_cpu_run_writes_a_row_per_backend(tmp_path, capsys):
    bench.main(["--models", "clip", "--batches", "1", "--repeats", "2", "--results-dir", str(tmp_path)])
    (csv_path,) = tmp_path.glob("attention_importance_op_*.csv")
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["provider"] for row in rows} == {"blockwise", "reference"}
    for row in rows:
        assert (row["model"], row["query"], row["timing"], row["batch"]) == ("CLIP-L/336", "cls", "wall", "1")
        assert float(row["p20_ms"]) <= float(row["median_ms"]) <= float(row["p80_ms"])
        assert row["device"] and row["torch"] and row["commit"]
    table = capsys.readouterr().out
    assert "attention_importance per backend" in table and "blockwise" in table


def test_inputs_are_token_major_with_their_lse():
    config = bench.Config("tiny", 9, 2, 8, has_cls=False, lse_given=True)
    q, k, has_cls, scale, lse = bench.make_inputs(config, 3, torch.float32, torch.device("cpu"), torch.Generator())
    assert q.shape == k.shape == (3, 2, 9, 8) and q.stride() == (9 * 2 * 8, 8, 2 * 8, 1)
    assert not has_cls and scale == 8**-0.5
    expected = torch.logsumexp(q.double() @ k.double().transpose(-1, -2) * scale, dim=-1)
    torch.testing.assert_close(lse.double(), expected, rtol=1e-6, atol=1e-6)
