"""Test-only import shim for the vLLM test environment, on PYTHONPATH so spawned workers get it.

vLLM's LLaVA module imports ``transformers.models.pixtral.image_processing_pixtral``, which in the
transformers vLLM pins needs torchvision; the torchvision wheels on PyPI are CUDA builds that break
``import vllm`` on a CPU machine, so the test environment has none. Where torchvision is missing,
that module is answered with its Pillow twin (``image_processing_pil_pixtral``), which holds the
one function vLLM takes from it. Qwen-VL likewise: ``image_processing_qwen2_vl`` is answered with
``image_processing_pil_qwen2_vl``, and the Qwen2.5-VL and Qwen3-VL processors load without a video
processor (the test checkpoints have none: Qwen's video processors need torchvision), reading
their image processor where vLLM asks the video processor for sizes and keyword names.
Nothing else is changed.
"""
import importlib
import importlib.abc
import importlib.util
import sys

ALIASES = {
    "transformers.models.pixtral.image_processing_pixtral": (
        "transformers.models.pixtral.image_processing_pil_pixtral"
    ),
    "transformers.models.qwen2_vl.image_processing_qwen2_vl": (
        "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl"
    ),
}


class _PillowTwins(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        return importlib.util.spec_from_loader(name, self) if name in ALIASES else None

    def create_module(self, spec):
        return importlib.import_module(ALIASES[spec.name])

    def exec_module(self, module):
        pass


def image_only_qwen_processors():
    from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    for processor_class in (Qwen2_5_VLProcessor, Qwen3VLProcessor):
        processor_class.get_attributes = classmethod(lambda cls: ["image_processor", "tokenizer"])
        processor_class.video_processor = property(lambda processor: processor.image_processor)


if importlib.util.find_spec("torchvision") is None:
    sys.meta_path.insert(0, _PillowTwins())
    image_only_qwen_processors()
