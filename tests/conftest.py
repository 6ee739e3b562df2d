"""Test set-up: Triton's interpreter on machines without CUDA, and the `cuda` marker."""
import os

import torch

if not torch.cuda.is_available():
    # Must be set before any Triton kernel is defined: Triton reads it when decorating.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU; skipped where there is none")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)

# tests/vllm runs in the vLLM environment (`make test-vllm`), never in the main suite.
collect_ignore = ["vllm"]
