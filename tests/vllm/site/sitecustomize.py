"""Test-only import shim for the vLLM test environment, on PYTHONPATH so spawned workers get it.

vLLM's LLaVA module imports ``transformers.models.pixtral.image_processing_pixtral``, which in the
transformers vLLM pins needs torchvision; the torchvision wheels on PyPI are CUDA builds that break
``import vllm`` on a CPU machine, so the test environment has none. Where torchvision is missing,
that module is answered with its Pillow twin (``image_processing_pil_pixtral``), which holds the
one function vLLM takes from it. Nothing else is changed.
"""
import importlib
import importlib.abc
import importlib.util
import sys

ALIASES = {
    "transformers.models.pixtral.image_processing_pixtral": (
        "transformers.models.pixtral.image_processing_pil_pixtral"
    ),
}


class _PillowTwins(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        return importlib.util.spec_from_loader(name, self) if name in ALIASES else None

    def create_module(self, spec):
        return importlib.import_module(ALIASES[spec.name])

    def exec_module(self, module):
        pass


if importlib.util.find_spec("torchvision") is None:
    sys.meta_path.insert(0, _PillowTwins())
