"""VisionZip where VLMs are served: the vLLM plugin (``docs/INTEGRATIONS.md``, "vLLM").

vLLM calls ``register`` in every process it starts (entry point group ``vllm.general_plugins``,
declared in ``pyproject.toml``). A model asks for VisionZip with
``hf_overrides={"visionzip": {"dominant": 54, "contextual": 10}}`` (``switch.py``); every other
model runs exactly as without this package. Modules: ``switch.py`` (the switch, the budget per
model family, the vLLM version), ``registry.py`` (which architecture gets which subclass, and the
check at engine start), ``tensor_parallel.py`` (the head reduction over the tensor-parallel group),
``clip_tower.py`` (vLLM's CLIP tower run with VisionZip), ``llava.py`` (LLaVA-1.5, LLaVA-NeXT),
``qwen_vl.py`` (Qwen2.5-VL, Qwen3-VL; with ``qwen_vl_encoder.py`` and ``qwen_vl_positions.py``),
``pruning_switch.py`` (the runners call a zipping model's position recompute).
"""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def register() -> None:
    """Register the VisionZip subclasses with vLLM and the check of the switch at engine start.

    On a vLLM outside the supported range nothing is registered and a warning says so once per
    process; a model that then asks for VisionZip is refused at engine start with that message.
    """
    import vllm
    from vllm import ModelRegistry

    from .pruning_switch import install as install_pruning_switch
    from .registry import guard_model_configs, register_architectures
    from .switch import supported_vllm_message

    version_problem = supported_vllm_message(vllm.__version__)
    guard_model_configs(ModelRegistry, version_problem)
    if version_problem is not None:
        logger.warning("%s; VisionZip is not registered", version_problem)
        return
    register_architectures(ModelRegistry)
    install_pruning_switch()
