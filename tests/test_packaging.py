"""Installing like a library: the metadata (pyproject.toml, one version), the message of a build that
cannot see torch, the values VISIONZIP_BUILD_CUDA accepts, what `make demo` and `make install`
install, and the message of the integrations
without transformers. The wheel round trip
itself is `make wheel-check` (tools/wheel_check.py), which `make test` runs beside the tests."""
from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import visionzip_kernels

ROOT = Path(__file__).resolve().parents[1]


def run_without(module: str, code: str) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter (at the repository root) in which ``module`` cannot be imported."""
    hide = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.partition('.')[0] == {module!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
    )
    return subprocess.run([sys.executable, "-c", hide + code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_pyproject_declares_the_metadata():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["build-system"]["build-backend"] == "setuptools.build_meta"
    project = pyproject["project"]
    assert project["name"] == "visionzip_kernels"
    assert project["requires-python"] == ">=3.10"
    assert set(project["dynamic"]) == {"version", "dependencies"}
    extras = project["optional-dependencies"]
    assert extras["transformers"] == ["transformers>=5.25", "pillow"]
    assert set(extras["test"]) == {"pytest", "hypothesis", "transformers>=5.25", "pillow"}
    assert extras["triton"] == ["triton"]


def test_installed_metadata_has_the_one_version_and_requires_the_torch_built_against():
    assert importlib.metadata.version("visionzip_kernels") == visionzip_kernels.__version__
    major, minor = torch.__version__.split(".")[:2]
    requires = importlib.metadata.requires("visionzip_kernels")
    assert f"torch=={major}.{minor}.*" in requires
    assert "numpy" in requires


def test_a_build_without_torch_names_the_flag():
    # What an isolated build (`pip install .`) meets: setup.py cannot import torch.
    result = run_without("torch", "import runpy; runpy.run_path('setup.py', run_name='__main__')")
    assert result.returncode != 0
    assert "--no-build-isolation" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_integrations_without_transformers_name_the_extra():
    result = run_without("transformers", "import visionzip_kernels.integrations")
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ImportError:"), result.stderr
    assert "pip install visionzip_kernels[transformers]" in last_line


def test_the_kernels_import_without_transformers():
    result = run_without("transformers", "import visionzip_kernels, sys; assert 'transformers' not in sys.modules")
    assert result.returncode == 0, result.stderr


def setup_py_with(build_cuda: str) -> subprocess.CompletedProcess:
    """``python setup.py --name`` (decides the extensions, builds nothing) with VISIONZIP_BUILD_CUDA set."""
    environment = {**os.environ, "VISIONZIP_BUILD_CUDA": build_cuda}
    return subprocess.run(
        [sys.executable, "setup.py", "--name"], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("build_cuda", ["0", "auto"])
def test_the_documented_build_cuda_values_are_accepted(build_cuda):
    result = setup_py_with(build_cuda)
    assert result.returncode == 0 and result.stdout.strip().endswith("visionzip_kernels"), result.stderr


@pytest.mark.parametrize("build_cuda", ["yes", "true", ""])
def test_another_build_cuda_value_stops_the_build_with_the_values(build_cuda):
    result = setup_py_with(build_cuda)
    assert result.returncode != 0
    assert f"VISIONZIP_BUILD_CUDA={build_cuda!r}" in result.stderr and "Traceback" not in result.stderr
    assert "1 (build the CUDA extension or fail), 0 (skip it) or auto" in result.stderr


def make_commands(*arguments: str) -> str:
    """The commands ``make`` would run (``make -n``), at the repository root."""
    result = subprocess.run(["make", "-n", *arguments], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_demo_installs_only_what_the_self_check_needs():
    demo = make_commands("demo", "PYTHON=python")
    assert "pip install -r requirements-build.txt" in demo and "requirements.txt" not in demo
    assert demo.rstrip().endswith("python -m visionzip_kernels")
    build = (ROOT / "requirements-build.txt").read_text().split()
    assert {"numpy", "ninja", "wheel", "setuptools>=64"} <= set(build)
    assert not {"triton", "transformers", "pytest", "hypothesis", "matplotlib"} & set(build)
    assert "pip install -r requirements.txt" in make_commands("install", "PYTHON=python")
    assert re.search(r"^test: install$", (ROOT / "Makefile").read_text(), re.M)


def test_torch_comes_from_torch_index_when_it_is_set():
    assert "--index-url" not in make_commands("install-core")
    cpu_index = "https://download.pytorch.org/whl/cpu"
    assert f"pip install --index-url {cpu_index} torch==" in make_commands("install-core", f"TORCH_INDEX={cpu_index}")


def test_no_build_output_goes_to_a_folder_named_build():
    """A build/ folder at the root would shadow the `build` package (`python -m build` there fails):
    setuptools, the Makefile's checks and the wheel check all write under .build/."""
    code = (
        "import runpy, setuptools\n"
        "captured = {}\n"
        "setuptools.setup = lambda **arguments: captured.update(arguments)\n"
        "runpy.run_path('setup.py')\n"
        "print(captured['options']['build']['build_base'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).parts[0] == ".build"
    assert "CHECK_DIR := .build/" in (ROOT / "Makefile").read_text()
    for text in ((ROOT / "Makefile").read_text(), (ROOT / "tools" / "wheel_check.py").read_text()):
        assert not re.search(r"(?<![.\w])build/|\"build\" /", text)
