"""The `make cuda-check` target (Makefile): it compiles every CUDA source for the architectures that
setup.py builds, and without nvcc it skips, or fails under CI=true. The architectures are listed
once, in csrc/cuda_archs.txt, and setup.py, the Makefile and CMakeLists.txt all read them there."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def listed_archs() -> list[str]:
    """csrc/cuda_archs.txt's architectures ("80", ...), read here independently of the build files."""
    lines = (ROOT / "csrc" / "cuda_archs.txt").read_text().splitlines()
    return [line.split()[0] for line in lines if line[:1].isdigit()]


def setup_py_archs() -> set[str]:
    """What setup.py's cuda_archs() gives TORCH_CUDA_ARCH_LIST ("8.0", ...), without the dot."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    (function,) = (node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "cuda_archs")
    namespace = {"os": os}
    exec(compile(ast.Module(body=[function], type_ignores=[]), "setup.py", "exec"), namespace)
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        return {arch.replace(".", "") for arch in namespace["cuda_archs"]()}
    finally:
        os.chdir(cwd)


def test_archs_are_listed_once_and_read_by_setup_py_and_cmake(tmp_path):
    assert listed_archs() and all(re.fullmatch(r"\d{2,3}", arch) for arch in listed_archs())
    assert setup_py_archs() == set(listed_archs())
    # CMakeLists.txt's reading of the list, run on its own as a CMake script.
    cmake_lines = (ROOT / "CMakeLists.txt").read_text().splitlines()
    start = next(i for i, line in enumerate(cmake_lines) if "cuda_archs.txt" in line and "file(STRINGS" in line)
    end = next(i for i in range(start, len(cmake_lines)) if cmake_lines[i].strip() == "endforeach()")
    script = tmp_path / "archs.cmake"
    script.write_text("\n".join([*cmake_lines[start:end + 1], 'message("${CMAKE_CUDA_ARCHITECTURES}")']))
    result = subprocess.run(["cmake", "-P", script], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().split(";") == listed_archs()


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
