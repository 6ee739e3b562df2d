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
        "(floor) backend cpu",
        "(added) validation + backend choice",
        "vz.zip_tokens [cpu]",
        "torch.ops.visionzip.zip_tokens",
        "(floor) backend blockwise",
        "(added) validation + backend choice",
        "vz.attention_importance [blockwise]",
        "torch.ops.visionzip.attention_importance",
    ]
    assert all(float(row["median_us"]) > 0 and row["rounds"] == "2" and row["device"] for row in rows)
    for row in rows:
        if row["entry_point"].startswith("(floor)"):
            assert float(row["over_floor_us"]) == 0.0
        assert float(row["over_floor_p20_us"]) <= float(row["over_floor_us"]) <= float(row["over_floor_p80_us"])
    assert "host microseconds per call" in capsys.readouterr().out


def test_overhead_is_taken_round_by_round():
    """Against the floor of the same round: a slow round (a busy machine) moves both alike."""
    samples = {
        ("op", bench_host_overhead.FLOOR + " cpu"): [10.0, 20.0, 30.0],
        ("op", "vz.op"): [11.0, 31.0, 32.0],
    }
    overheads = bench_host_overhead.above_floor(samples)
    assert overheads["op", "vz.op"].median_ms == 2.0  # rounds: +1, +11, +2 (medians apart: 31 - 20 = 11)
    assert overheads["op", bench_host_overhead.FLOOR + " cpu"].median_ms == 0.0
