"""Which vLLM architecture gets which VisionZip subclass, and the check that runs at engine start.

Each subclass is registered under the in-tree architecture name it extends (vLLM logs the
overwrite at debug level only) and behaves exactly as its parent unless the model's config holds
the switch (``switch.py``), so vLLM is unchanged for every model that does not ask for VisionZip.
The classes are given to vLLM as ``"module:Class"`` strings: vLLM imports them only when such a
model is served.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

from .switch import SWITCH, llava_budget, qwen_budget, switch_settings


@dataclass(frozen=True)
class Architecture:
    """One supported architecture.

    name: vLLM's architecture name (``hf_config.architectures[0]``);
    model_class: our subclass of vLLM's class, as ``"module:Class"``;
    budget: ``(hf_config, name) -> Budget | None``, the family's reading of the switch.
    """

    name: str
    model_class: str
    budget: Callable


ARCHITECTURES = (
    Architecture(
        "LlavaForConditionalGeneration", "visionzip_kernels.vllm.llava:VisionZipLlava", llava_budget
    ),
    Architecture(
        "LlavaNextForConditionalGeneration",
        "visionzip_kernels.vllm.llava:VisionZipLlavaNext",
        llava_budget,
    ),
    Architecture(
        "Qwen2_5_VLForConditionalGeneration",
        "visionzip_kernels.vllm.qwen_vl:VisionZipQwen2_5_VLForConditionalGeneration",
        qwen_budget,
    ),
    Architecture(
        "Qwen3VLForConditionalGeneration",
        "visionzip_kernels.vllm.qwen_vl:VisionZipQwen3VLForConditionalGeneration",
        qwen_budget,
    ),
)


def architecture(name: str) -> Architecture | None:
    """The supported ``Architecture`` called ``name``, or ``None``."""
    return next((entry for entry in ARCHITECTURES if entry.name == name), None)


def register_architectures(model_registry) -> None:
    """Register every subclass with vLLM's ``ModelRegistry`` under its architecture's name."""
    for entry in ARCHITECTURES:
        model_registry.register_model(entry.name, entry.model_class)


def check_model_config(model_config, version_problem: str | None) -> None:
    """Refuse, at engine start, a model that asks for VisionZip and cannot have it.

    model_config: vLLM's ``ModelConfig`` (its ``hf_config`` and resolved ``architecture``);
    version_problem: why the installed vLLM is not supported, or ``None``. A model without the
    switch passes untouched. Raises ``RuntimeError`` on an unsupported vLLM, ``ValueError`` for an
    architecture VisionZip does not support, and the family's errors for a bad budget.
    """
    hf_config = model_config.hf_config
    if switch_settings(hf_config) is None:
        return
    if version_problem is not None:
        raise RuntimeError(version_problem)
    name = model_config.architecture
    entry = architecture(name)
    if entry is None:
        supported = ", ".join(entry.name for entry in ARCHITECTURES)
        raise ValueError(
            f"{SWITCH}: VisionZip does not support {name} in vLLM (supported: {supported}); "
            "remove the switch to serve this model unchanged"
        )
    entry.budget(hf_config, name)


def guard_model_configs(model_registry, version_problem: str | None) -> None:
    """Make ``model_registry.inspect_model_cls``, which every ``ModelConfig`` calls once when it is
    created (in the front end, before any model is built), run ``check_model_config`` after it.

    The method is replaced on the registry instance, once per process.
    """
    inspect = model_registry.inspect_model_cls
    if getattr(inspect, "visionzip_guard", False):
        return

    @functools.wraps(inspect)
    def inspect_and_check(architectures, model_config):
        model_info, name = inspect(architectures, model_config)
        if getattr(model_config, "hf_config", None) is not None:
            checked = _ResolvedConfig(model_config.hf_config, name)
            check_model_config(checked, version_problem)
        return model_info, name

    inspect_and_check.visionzip_guard = True
    model_registry.inspect_model_cls = inspect_and_check


@dataclass(frozen=True)
class _ResolvedConfig:
    """What ``check_model_config`` reads of a ``ModelConfig`` whose architecture is being resolved."""

    hf_config: object
    architecture: str
