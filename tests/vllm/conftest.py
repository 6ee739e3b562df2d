"""The vLLM tests' set-up: the environment, the references and one engine at a time.

The references (tiny checkpoints and the Hugging Face integration's results on them) are made by
``make_references.py`` in the main environment; ``VISIONZIP_VLLM_REFERENCES`` names their folder
(``make test-vllm`` sets it). Engines run in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``),
eager, in float32, and are kept between tests: asking for another configuration shuts the
previous engine down first, so the test files are grouped by engine.
"""
from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import pytest

SITE = str(Path(__file__).parent / "site")  # the test-only import shim, for spawned workers too
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [SITE, os.environ.get("PYTHONPATH")]))
sys.path.insert(0, SITE)
import sitecustomize  # noqa: E402,F401  (this process started before PYTHONPATH named it)

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

REFERENCES_ENV = "VISIONZIP_VLLM_REFERENCES"
ENGINE_DEFAULTS = dict(
    dtype="float32",
    enforce_eager=True,
    max_model_len=256,
    seed=0,
    limit_mm_per_prompt={"image": 2},
)


def references_dir() -> Path:
    folder = os.environ.get(REFERENCES_ENV)
    if not folder or not (Path(folder) / "complete").exists():
        raise pytest.UsageError(
            f"{REFERENCES_ENV} must name a folder written by tests/vllm/make_references.py (run it "
            "with the main environment's Python), or run `make test-vllm`"
        )
    return Path(folder)


@pytest.fixture(scope="session")
def references():
    """``references(family)`` -> ``(checkpoint path, {"stock": [...], "zipped": [...]})``."""
    folder = references_dir()

    def load(family: str):
        data = torch.load(folder / family / "references.pt", weights_only=False)
        return str(folder / family / "checkpoint"), data

    return load


class Engines:
    """At most one live ``vllm.LLM``; ``get(**options)`` returns the one with those options."""

    def __init__(self):
        self.options = None
        self.llm = None

    def get(self, **options):
        options = {**ENGINE_DEFAULTS, **options}
        if options != self.options:
            self.close()
            from vllm import LLM

            self.llm = LLM(**options)
            self.options = options
        return self.llm

    def close(self):
        if self.llm is None:
            return
        from vllm.distributed import cleanup_dist_env_and_memory

        self.llm.llm_engine.engine_core.shutdown()
        self.llm = self.options = None
        gc.collect()
        cleanup_dist_env_and_memory()


@pytest.fixture(scope="session")
def engines():
    pool = Engines()
    yield pool
    pool.close()
