"""The configurations ``bench_generate.py`` compares, each a model twin with its inputs.

- ``full``: stock Hugging Face, every visual token, eager (SDPA, dynamic cache).
- ``published``: the published VisionZip method patched into the same model: the vision tower
  runs every layer with eager attention and ``output_attentions=True`` (a copy of the tower with
  the same weights), ``published_zip_tokens`` selects and merges (``testing/published.py``), the
  projector follows. Its features are laid out as this package lays them out, so the language
  model sees the same number of tokens as in the ``vzk_*`` configurations at the same budget.
- ``vzk_eager``: ``apply_visionzip(model, processor, dominant, contextual)``, eager.
- ``vzk_graphs``: the same with ``cuda_graphs=True`` (the vision path replayed from a CUDA graph).
- ``vzk_compile``: the README's fastest recipe: ``cuda_graphs=True``, the language model compiled
  (``torch.compile``, ``mode="reduce-overhead"`` on a GPU) and ``generate(...,
  cache_implementation="static")``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from transformers import LlavaNextForConditionalGeneration

from prefill.geometry import Budget, ModelGeometry
from prefill.pipelines import published_encoder
from visionzip_kernels.integrations import apply_visionzip, llava, llava_next
from visionzip_kernels.integrations.handle import bind_methods
from visionzip_kernels.testing.published import published_zip_tokens

from .models import IMAGE_ID, prompts_and_images, twin

FULL, PUBLISHED, VZK_EAGER, VZK_GRAPHS, VZK_COMPILE = "full", "published", "vzk_eager", "vzk_graphs", "vzk_compile"
CONFIGS = (FULL, PUBLISHED, VZK_EAGER, VZK_GRAPHS, VZK_COMPILE)
PACKAGE_CONFIGS = (VZK_EAGER, VZK_GRAPHS, VZK_COMPILE)
RECIPES = {
    FULL: "stock HF, every visual token, SDPA, dynamic cache",
    PUBLISHED: "published VisionZip: eager attention + output_attentions, published selection",
    VZK_EAGER: "apply_visionzip, eager",
    VZK_GRAPHS: "apply_visionzip(cuda_graphs=True)",
    VZK_COMPILE: "apply_visionzip(cuda_graphs=True) + compiled LM + static cache",
}
GPU_COMPILE = dict(mode="reduce-overhead", dynamic=False)
TINY_COMPILE = dict(backend="eager", dynamic=False)  # Dynamo only: Inductor takes minutes on a small CPU


@dataclass
class Config:
    """One configuration at one budget (``None`` for ``full``): a model twin and its inputs."""

    name: str
    budget: Budget | None
    model: torch.nn.Module
    inputs: dict
    generate_options: dict = field(default_factory=dict)

    def generate(self, new_tokens: int) -> torch.Tensor:
        """Greedy ``generate`` of exactly ``new_tokens`` tokens; returns the sequences."""
        return self.model.generate(
            **self.inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
            **self.generate_options,
        )

    @property
    def visual_tokens(self) -> int:
        """Image placeholders in the first prompt: the visual tokens the language model sees."""
        return int((self.inputs["input_ids"][0] == IMAGE_ID).sum())

    @property
    def prompt_tokens(self) -> int:
        return int(self.inputs["input_ids"].shape[1])


def processed_inputs(model, processor, geometry: ModelGeometry, batch: int, budget: Budget | None, dtype) -> dict:
    """The processor's outputs for ``batch`` prompts and images, on the model's device; with
    VisionZip's placeholder count at ``budget`` (``None``: every visual token)."""
    prompts, images = prompts_and_images(geometry, batch)
    if budget is None:
        inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True)
    else:
        with apply_visionzip(model, processor, dominant=budget.k_dom, contextual=budget.k_ctx):
            inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True)
    inputs = inputs.to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    return dict(inputs)


def published_project(eager_tower, budget: Budget):
    """The published vision path as a ``project(llava_model, pixel_values)`` of ``integrations``:
    ``(tokens, dominant_idx, projected features)``."""
    encode = published_encoder(eager_tower)

    def project(llava_model, pixel_values):
        hidden, attn, metric = encode(pixel_values)
        tokens, dominant_idx = published_zip_tokens(hidden, attn, budget.k_dom, budget.k_ctx, metric)
        return tokens, dominant_idx, llava_model.multi_modal_projector(tokens)

    return project


def build_config(name: str, budget: Budget | None, model, eager_tower, inputs: dict, compile_options: dict) -> Config:
    """The twin of ``model`` that runs configuration ``name`` at ``budget``."""
    if name == FULL:
        return Config(name, None, twin(model), inputs)
    options = dict(dominant=budget.k_dom, contextual=budget.k_ctx)
    if name == PUBLISHED:
        model_twin = twin(model)
        next_model = isinstance(model, LlavaNextForConditionalGeneration)
        image_features = llava_next.get_image_features if next_model else llava.get_image_features
        project = published_project(eager_tower, budget)
        bind_methods(model_twin.model, {"get_image_features": functools.partial(image_features, project=project)},
                     owner_arg="model")
        return Config(name, budget, model_twin, inputs)
    if name == VZK_EAGER:
        model_twin = twin(model)
        apply_visionzip(model_twin, **options)
        return Config(name, budget, model_twin, inputs)
    if name == VZK_GRAPHS:
        model_twin = twin(model)
        apply_visionzip(model_twin, **options, cuda_graphs=True)
        return Config(name, budget, model_twin, inputs)
    model_twin = twin(model, language_model=True)
    apply_visionzip(model_twin, **options, cuda_graphs=True)
    language_model = model_twin.model.language_model
    language_model.forward = torch.compile(language_model.forward, **compile_options)
    return Config(name, budget, model_twin, inputs, dict(cache_implementation="static", disable_compile=True))


def planned_budgets(name: str, geometry: ModelGeometry, all_budgets: bool) -> list[Budget | None]:
    """``full`` has none; ``published`` and ``vzk_eager`` run every budget; the CUDA-graph and
    compiled configurations the smallest (the fastest recipe's), or every one with ``all_budgets``."""
    if name == FULL:
        return [None]
    if name in (PUBLISHED, VZK_EAGER) or all_budgets:
        return list(geometry.budgets)
    return [geometry.budgets[0]]
