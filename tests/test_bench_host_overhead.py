"""`benchmarks/bench_host_overhead.py` runs on the CPU and writes one row per entry point."""
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_host_overhead  # noqa: E402


def test_host_overhead_benchmark_writes_rows(tmp_path, capsys):
    bench_host_overhead.main(["--device", "cpu", "--rounds", "2", "--calls", "5", "--results-dir", str(tmp_path)])
    rows = list(csv.DictReader((tmp_path / "host_overhead_cpu.csv").open()))
    assert [row["entry_point"] for row in rows] == [
        "_zip_tokens_cpu (floor)",
        "vz.zip_tokens [cpu]",
        "torch.ops.visionzip.zip_tokens",
        "vz.attention_importance [blockwise]",
        "torch.ops.visionzip.attention_importance",
    ]
    assert all(float(row["median_us"]) > 0 and row["rounds"] == "2" and row["device"] for row in rows)
    assert "host microseconds per call" in capsys.readouterr().out
