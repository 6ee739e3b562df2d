"""`benchmarks/bench_host_overhead.py` runs on the CPU and writes one row per entry point."""
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_host_overhead  # noqa: E402


def test_host_overhead_benchmark_writes_rows(tmp_path, capsys):
    bench_host_overhead.main(["--device", "cpu", "--rounds", "2", "--calls", "5", "--results-dir", str(tmp_path)])
    rows = list(csv.DictReader((tmp_path / "host_overhead_cpu.csv").open()))
    floor = {row["op"]: row["median_us"] for row in rows if row["entry_point"].startswith("(floor)")}
    assert [row["entry_point"] for row in rows] == [
        "(floor) backend cpu",
        "vz.zip_tokens [cpu]",
        "torch.ops.visionzip.zip_tokens",
        "(floor) backend blockwise",
        "vz.attention_importance [blockwise]",
        "torch.ops.visionzip.attention_importance",
    ]
    assert all(float(row["median_us"]) > 0 and row["rounds"] == "2" and row["device"] for row in rows)
    for row in rows:
        # from the unrounded medians: within the two roundings of the printed ones
        assert abs(float(row["over_floor_us"]) - (float(row["median_us"]) - float(floor[row["op"]]))) <= 0.011
    assert "host microseconds per call" in capsys.readouterr().out
