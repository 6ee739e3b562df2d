"""The self-check (`python -m visionzip_kernels`) and `benchmarks/bench_zip_tokens.py` run, report, and fail loudly."""
import csv
import sys
from pathlib import Path

import pytest

import visionzip_kernels.__main__ as self_check
from visionzip_kernels.testing.timing import ratio_per_round

SMALL_GEOMETRIES = [("CLIP-like", 80, 48, 4, 16, True), ("SigLIP-like", 90, 40, 4, 12, False)]


def test_self_check_checks_every_backend(monkeypatch, capsys):
    monkeypatch.setattr(self_check, "GEOMETRIES", SMALL_GEOMETRIES)
    assert self_check.main(["--batch", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "all backends agree with the reference" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("CLIP-like", "SigLIP-like"))]
    backends = self_check.available_backends("cpu")
    assert [row[2] for row in rows] == backends * 6  # 2 geometries x 3 dtypes
    for row in rows:
        assert row[3] == ("baseline" if row[2] == "reference" else "equal")


def test_self_check_fails_when_a_backend_disagrees(monkeypatch, capsys):
    monkeypatch.setattr(self_check, "GEOMETRIES", SMALL_GEOMETRIES[:1])
    real_zip_tokens = self_check.zip_tokens

    def wrong_cpu_backend(*args, backend, **kwargs):
        tokens, dominant_idx = real_zip_tokens(*args, backend=backend, **kwargs)
        return (tokens * 1.01, dominant_idx) if backend == "cpu" else (tokens, dominant_idx)

    monkeypatch.setattr(self_check, "zip_tokens", wrong_cpu_backend)
    assert self_check.main(["--batch", "1", "--device", "cpu"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_zip_tokens_benchmark_writes_rows(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_zip_tokens

    bench_zip_tokens.main(
        ["--device", "cpu", "--batches", "2", "--dtypes", "bfloat16", "--layouts", "rows", "--results-dir", str(tmp_path)]
    )
    rows = list(csv.DictReader((tmp_path / "zip_tokens_cpu.csv").open()))
    assert {row["provider"] for row in rows} == {"cpu", "reference", "published"}
    assert all(float(row["median_ms"]) > 0 and row["commit"] and row["device"] for row in rows)
    assert "x = speed-up over published" in capsys.readouterr().out


def test_a_ratio_is_read_round_by_round_and_only_where_the_rounds_agree():
    steady = ratio_per_round([10.0, 12.0, 11.0, 10.5, 9.0], [1.0, 1.2, 1.1, 1.05, 0.9])
    assert (steady.median, steady.p20, steady.p80, steady.rounds) == pytest.approx((10.0, 10.0, 10.0, 5))
    assert steady.readable
    # The case: the same row read 3.8x, 336x and 1921x across runs.
    noisy = ratio_per_round([3.8, 336.0, 1921.0, 40.0, 64.0], [1.0] * 5)
    assert not noisy.readable
    edge = ratio_per_round([10.0, 15.0], [1.0, 1.0])  # p80 / p20 = 14 / 11
    assert edge.readable and not ratio_per_round([10.0, 25.0], [1.0, 1.0]).readable  # 22 / 13


def test_the_self_check_prints_spreads_and_says_when_a_ratio_is_too_noisy(monkeypatch, capsys):
    monkeypatch.setattr(self_check, "GEOMETRIES", SMALL_GEOMETRIES[:1])
    timed = [backend for backend in self_check.available_backends("cpu") if backend != "triton"]  # interpreted
    injected = iter([
        # float32: steady rounds; float16: the cpu backend's rounds scatter; bfloat16: steady again
        {"reference": [10.0, 10.2, 9.8, 10.1, 9.9], "cpu": [1.0, 1.02, 0.98, 1.01, 0.99]},
        {"reference": [10.0, 10.0, 10.0, 10.0, 10.0], "cpu": [0.1, 1.0, 2.0, 0.5, 5.0]},
        {"reference": [4.0] * 5, "cpu": [2.0] * 5},
    ])

    def fake_round_medians(fns, device, rounds, calls):
        times = next(injected)
        assert len(fns) == len(timed) and (rounds, calls) == (5, 3)
        return [times[backend] for backend in timed]

    monkeypatch.setattr(self_check, "round_medians", fake_round_medians)
    assert self_check.main(["--batch", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    rows = {(line.split()[1], line.split()[2]): line for line in out.splitlines() if line.startswith("CLIP-like")}
    assert "10.000 (9.880-10.120)" in rows["float32", "reference"] and "baseline" in rows["float32", "reference"]
    assert rows["float32", "cpu"].endswith("10.0x (10.0-10.0)")
    assert rows["float16", "cpu"].endswith("4.4-36.0x: too noisy")  # ratios 100, 10, 5, 20, 2
    assert rows["bfloat16", "cpu"].endswith("2.0x (2.0-2.0)")
    assert "over 5 rounds (p20-p80 across rounds), each round 3 calls" in out
