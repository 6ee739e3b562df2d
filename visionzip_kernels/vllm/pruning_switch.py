"""The runners' multimodal-pruning switch, turned on for a model that zips its images.

A runner calls a model's ``recompute_mrope_positions`` (which gives VisionZip's kept tokens their
positions, ``qwen_vl_positions``) only where its pruning switch is on, and vLLM turns it on only
for video pruning (``video_pruning_rate > 0``):

- Model Runner V1 (``GPUModelRunner``, and ``CPUModelRunner``, whose ``load_model`` never sets
  it): ``is_multimodal_pruning_enabled``, set in ``load_model``;
- Model Runner V2 (vLLM's default on GPUs from 0.32): ``maybe_create_mm_pruner``, which reads the
  multimodal config, as imported into ``vllm.v1.worker.gpu.model_states.default``.

``install`` wraps those three, once per process: after the original, the switch is on where the
loaded model says ``is_multimodal_pruning_enabled`` and holds a ``visionzip_budget``, and exactly
as vLLM leaves it for every other model.
"""
from __future__ import annotations

import functools
import importlib


def zips_images(model) -> bool:
    """Whether ``model`` is one of the plugin's models asked to zip."""
    return getattr(model, "visionzip_budget", None) is not None


def switch_on_after_load(load_model):
    """``load_model`` of a V1 runner, then the pruning switch on for a model that zips."""

    @functools.wraps(load_model)
    def wrapped(runner, *args, **kwargs):
        result = load_model(runner, *args, **kwargs)
        if zips_images(runner.get_model()):
            runner.is_multimodal_pruning_enabled = True
        return result

    wrapped.visionzip_switch = True
    return wrapped


def pruner_for_zipping_models(maybe_create_mm_pruner, pruner_class):
    """V2's ``maybe_create_mm_pruner``, creating the pruner for a model that zips too."""

    @functools.wraps(maybe_create_mm_pruner)
    def wrapped(model_config, model, rope_state, encoder_cache):
        if zips_images(model) and rope_state is not None and encoder_cache is not None:
            return pruner_class(model, rope_state, encoder_cache, model_config.get_inputs_embeds_size())
        return maybe_create_mm_pruner(model_config, model, rope_state, encoder_cache)

    wrapped.visionzip_switch = True
    return wrapped


def install() -> None:
    """Wrap the three switches; a second call changes nothing."""
    for module_name, class_name in (
        ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner"),
        ("vllm.v1.worker.cpu_model_runner", "CPUModelRunner"),
    ):
        runner_class = getattr(importlib.import_module(module_name), class_name)
        load_model = runner_class.__dict__["load_model"]
        if not getattr(load_model, "visionzip_switch", False):
            runner_class.load_model = switch_on_after_load(load_model)
    default = importlib.import_module("vllm.v1.worker.gpu.model_states.default")
    pruning = importlib.import_module("vllm.v1.worker.gpu.model_states.mm_pruning")
    if not getattr(default.maybe_create_mm_pruner, "visionzip_switch", False):
        default.maybe_create_mm_pruner = pruner_for_zipping_models(
            default.maybe_create_mm_pruner, pruning.MultiModalPruner
        )
