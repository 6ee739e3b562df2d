"""``benchmarks/bench_vllm.py --tiny`` runs end to end: rows for both engines at each concurrency,
the zipped prompt shorter by the LLaVA-NeXT layout's count."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_vllm.py"


def test_the_tiny_benchmark_writes_both_engines_rows(tmp_path):
    environment = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--results-dir", str(tmp_path)],
        check=True,
        env=environment,
        cwd=tmp_path,
    )
    with (tmp_path / "vllm_cpu_tiny.csv").open() as handle:
        rows = {(row["provider"], int(row["concurrency"])): row for row in csv.DictReader(handle)}
    assert set(rows) == {(provider, c) for provider in ("full", "visionzip") for c in (1, 2)}
    for concurrency in (1, 2):
        full, zipped = rows["full", concurrency], rows["visionzip", concurrency]
        # 5 crops of 16 patches, unpadded, with newlines (full) vs 5 x (5 + 3) + 2 newlines
        assert int(full["prompt_tokens"]) - int(zipped["prompt_tokens"]) == 100 - 54
        assert float(zipped["requests_per_s_median"]) > 0 and float(zipped["ttft_s_p90"]) > 0
