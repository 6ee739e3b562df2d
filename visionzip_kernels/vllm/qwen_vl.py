"""VisionZip for vLLM's Qwen2.5-VL and Qwen3-VL: the model and processor subclasses.

Registered under the in-tree architecture names (``registry.py``). Without ``hf_config.visionzip``
every class here is its vLLM parent, method for method. With it (a fraction budget per image, as
``apply_visionzip``'s for Qwen-VL):

- the multimodal processor writes each image's kept token count (``Budget.tokens_for`` of its
  merged tokens) through vLLM's prompt updates, and refuses image embeddings, which VisionZip
  cannot zip; the processing info allows no videos (VisionZip zips still images, as
  ``apply_visionzip`` does), so vLLM's input checks refuse them and its profiler leaves them out;
- ``embed_multimodal`` returns each image's kept tokens with their position channels
  (``qwen_vl_encoder.zip_encoded``; ``DataParallelZip`` in the data-parallel encoder mode);
- ``get_mrope_input_positions`` and ``recompute_mrope_positions`` give Hugging Face's positions
  (``qwen_vl_positions``); the model reports ``is_multimodal_pruning_enabled``, and
  ``pruning_switch`` makes the runners call ``recompute_mrope_positions`` for it.
"""
from __future__ import annotations

import dataclasses

from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
)
from vllm.model_executor.models.vision import run_dp_sharded_mrope_vision_model
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.utils.gpu_sync_debug import gpu_sync_allowed

from .qwen_vl_encoder import DataParallelZip, zip_encoded
from .qwen_vl_positions import ImageRun, kept_positions, prompt_positions
from .switch import qwen_budget


def budget_of(hf_config):
    """The model's VisionZip ``Budget`` (``switch.qwen_budget``), or ``None`` when it is off."""
    return qwen_budget(hf_config, hf_config.architectures[0])


class ZipProcessingInfo:
    """Processing info mixin: no videos while VisionZip is on (a limit of 0, which vLLM's input
    checks and profiler read; the modality stays listed, as Qwen3-VL's processing info needs)."""

    def get_supported_mm_limits(self):
        limits = super().get_supported_mm_limits()
        if budget_of(self.get_hf_config()) is None:
            return limits
        return {**limits, "video": 0}


def reduced_image_update(update, budget, out_mm_kwargs):
    """``update`` (the parent's image ``PromptReplacement``) writing each image's kept count."""

    def replacement(item_idx: int):
        if "image_embeds" in out_mm_kwargs["image"][item_idx]:
            raise ValueError(
                "VisionZip zips images from their pixels; image embeddings cannot be zipped. "
                "Pass the image itself, or start the engine without hf_overrides['visionzip']"
            )
        tokens = update.replacement(item_idx)
        return tokens[: budget.tokens_for(len(tokens))]

    return dataclasses.replace(update, replacement=replacement)


class ZipPromptUpdates:
    """Multimodal processor mixin: each image's placeholders are its kept tokens."""

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        budget = budget_of(self.info.get_hf_config())
        if budget is None:
            return updates
        return [
            reduced_image_update(update, budget, out_mm_kwargs) if update.modality == "image" else update
            for update in updates
        ]


class ZipQwenVL:
    """Model mixin: the Qwen-VL model with VisionZip when its config asks for it."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.visionzip_budget = budget_of(self.config)
        if self.visionzip_budget is not None:
            self.is_multimodal_pruning_enabled = True

    def embed_multimodal(self, **kwargs):
        budget = self.visionzip_budget
        if budget is None:
            return super().embed_multimodal(**kwargs)
        image_input = self._parse_and_validate_multimodal_inputs(**kwargs).get("image")
        if image_input is None:
            return []
        grid_thw = image_input["image_grid_thw"].tolist()
        pixel_values = image_input["pixel_values"]
        if self.use_data_parallel:
            runner = DataParallelZip(self.visual, budget)
            gathered = run_dp_sharded_mrope_vision_model(
                runner, pixel_values, grid_thw, rope_type="rope_3d"
            )
            return runner.trim(gathered, grid_thw)
        return zip_encoded(self.visual, pixel_values, grid_thw, budget)

    def get_mrope_input_positions(self, input_tokens, mm_features):
        if self.visionzip_budget is None:
            return super().get_mrope_input_positions(input_tokens, mm_features)
        merge_size = self.config.vision_config.spatial_merge_size
        runs = []
        for feature in sorted(mm_features, key=lambda feature: feature.mm_position.offset):
            frames, height, width = feature.data["image_grid_thw"].data.tolist()
            longest_side = max(frames, height // merge_size, width // merge_size)
            runs.append(ImageRun(feature.mm_position.offset, feature.mm_position.length, longest_side))
        return prompt_positions(len(input_tokens), runs)

    def recompute_mrope_positions(
        self, input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens
    ):
        if self.visionzip_budget is None:
            return super().recompute_mrope_positions(
                input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens
            )
        with gpu_sync_allowed():  # finds the image tokens, reads the largest position (as EVS does)
            return kept_positions(
                input_ids,
                multimodal_embeddings,
                mrope_positions,
                num_computed_tokens,
                self.config.image_token_id,
            )


def with_visionzip(model_class, processor_class, info_class, dummy_inputs):
    """``model_class`` (a vLLM Qwen-VL model) with ``ZipQwenVL``, its processor with
    ``ZipPromptUpdates`` and its processing info with ``ZipProcessingInfo``, registered together
    as vLLM registers the parent's (``dummy_inputs``: the parent's dummy inputs builder)."""
    module = {"__module__": __name__}
    info = type(f"VisionZip{info_class.__name__}", (ZipProcessingInfo, info_class), module)
    processor = type(f"VisionZip{processor_class.__name__}", (ZipPromptUpdates, processor_class), module)
    doc = f"vLLM's {model_class.__name__}, with VisionZip when ``hf_config.visionzip`` is set."
    model = type(f"VisionZip{model_class.__name__}", (ZipQwenVL, model_class), {**module, "__doc__": doc})
    return MULTIMODAL_REGISTRY.register_processor(processor, info=info, dummy_inputs=dummy_inputs)(model)


VisionZipQwen2_5_VLForConditionalGeneration = with_visionzip(
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
    Qwen2_5_VLDummyInputsBuilder,
)
VisionZipQwen3VLForConditionalGeneration = with_visionzip(
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
    Qwen3VLDummyInputsBuilder,
)
