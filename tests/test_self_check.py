"""The self-check (`python -m visionzip_kernels`) and `benchmarks/bench_zip_tokens.py` run, report, and fail loudly."""
import csv
import sys
from pathlib import Path

import visionzip_kernels.__main__ as self_check

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
