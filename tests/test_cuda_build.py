"""The `make cuda-check` target (Makefile): it compiles every CUDA source for the architectures that
setup.py builds, and without nvcc it skips, or fails under CI=true."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def setup_py_archs() -> set[str]:
    """setup.py's CUDA_ARCHS ("8.0;8.6;...") as compute capabilities without the dot ("80", ...)."""
    for node in ast.parse((ROOT / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CUDA_ARCHS" for t in node.targets):
            return {arch.replace(".", "") for arch in node.value.value.split(";")}
    raise AssertionError("setup.py defines no CUDA_ARCHS")


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", f"PYTHON={sys.executable}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


def test_cuda_check_compiles_every_source_for_setup_py_archs():
    dry_run = make("--dry-run", "--always-make", "cuda-check-objects")
    assert dry_run.returncode == 0, dry_run.stderr
    compiles = [line for line in dry_run.stdout.splitlines() if " -c csrc/" in line]
    sources = sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "csrc").glob("*.cu"))
    assert sorted(re.search(r" -c (\S+)", line).group(1) for line in compiles) == sources
    for line in compiles:
        assert set(re.findall(r"-gencode arch=compute_(\d+),code=sm_\1", line)) == setup_py_archs()
        assert "--fmad=false" in line


@pytest.mark.parametrize("ci", ["false", "true"])
def test_cuda_check_without_nvcc(ci):
    result = make("cuda-check", "NVCC=visionzip-no-such-nvcc", f"CI={ci}")
    if ci == "true":
        assert result.returncode != 0
        assert "nvcc not found" in result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert "nvcc not found: skipping the CUDA compile check" in result.stdout
