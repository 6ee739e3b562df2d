"""Measures one model geometry at one batch size: every pipeline, budget and stage, as rows.

Per pipeline, in this order:
1. time to first token for each budget, the whole chain from pixels, measured first so that only
   the weights and the pixels are resident: its peak memory is the pipeline's peak;
2. the encoder stage (budget-independent for the two VisionZip pipelines);
3. from the encoder's output, zip (VisionZip pipelines), projector and LM prefill for each budget.
Each is timed eagerly and, where asked and possible, as a CUDA-graph replay (a row either way).
An out-of-memory error becomes a row with status ``oom`` and the run goes on.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch

from visionzip_kernels.ops import attention_importance, zip_tokens

from .geometry import Budget, ModelGeometry
from .models import Models, prompt_ids
from .pipelines import Stage, encoder_stage, run_chain, stages_after_encoder
from .rows import FULL, PACKAGE, PIPELINES, PUBLISHED, TTFT
from .timing import GraphCaptureError, Memory, Timer, Timing


def _zip_impl(pipeline: str, device: torch.device) -> str:
    if pipeline == PACKAGE:
        importance = attention_importance.available_backends(device)[0]
        zipper = zip_tokens.available_backends(device)[0]
        return f"attention_importance[{importance}] + zip_tokens[{zipper}]"
    return "published_zip_tokens[eager torch]" if pipeline == PUBLISHED else ""


def _timing_fields(timing: Timing) -> dict:
    return {
        "median_ms": round(timing.median_ms, 4), "p20_ms": round(timing.p20_ms, 4),
        "p80_ms": round(timing.p80_ms, 4), "reps": timing.repeats,
    }


def _memory_fields(memory: Memory | None) -> dict:
    if memory is None:
        return {}
    return {"peak_mib": round(memory.peak_mib, 1), "resident_mib": round(memory.resident_mib, 1)}


def _measure_call(timer: Timer, stage: str, fn: Callable, graph_blocker: str, try_graph: bool) -> list[dict]:
    """Peak memory and eager timing of ``fn``; then, if ``try_graph``, a CUDA-graph row."""
    memory = timer.memory(fn)
    eager = {"stage": stage, "cuda_graph": "no", "status": "ok", **_timing_fields(timer.time(fn)),
             **_memory_fields(memory)}
    if not try_graph:
        return [eager]
    graph = {"stage": stage, "cuda_graph": "yes"}
    if graph_blocker:
        return [eager, {**graph, "status": f"not capturable: {graph_blocker}"}]
    try:
        return [eager, {**graph, "status": "ok", **_timing_fields(timer.time_graph(fn))}]
    except GraphCaptureError as error:
        return [eager, {**graph, "status": f"graph capture failed: {error}"}]
    except torch.cuda.OutOfMemoryError as error:  # the graph's private pool did not fit beside the cache
        return [eager, {**graph, "status": _oom_status(error)}]


def _oom_status(error: torch.cuda.OutOfMemoryError) -> str:
    return f"oom: {str(error).splitlines()[0][:160]}"


def _oom_row(stage: str, error: torch.cuda.OutOfMemoryError) -> dict:
    return {"stage": stage, "cuda_graph": "no", "status": _oom_status(error)}


def _release_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class ModelMeasurement:
    """Measures ``geometry`` with ``models`` at one ``batch`` size; ``graph_stages`` are also graphed."""

    def __init__(self, geometry: ModelGeometry, models: Models, batch: int, timer: Timer,
                 graph_stages: frozenset[str], dtype: torch.dtype, seed: int = 0):
        self.geometry = geometry
        self.models = models
        self.batch = batch
        self.timer = timer
        self.graph_stages = graph_stages
        generator = torch.Generator().manual_seed(seed)
        encoder = geometry.encoder
        shape = (batch * geometry.crops, 3, encoder.image_size, encoder.image_size)
        self.pixels = torch.randn(shape, generator=generator).to(timer.device, dtype)
        self.system_ids, self.question_ids = prompt_ids(geometry, batch, timer.device, generator)

    def rows(self) -> list[dict]:
        """Every measurement of every pipeline, each a row without the run environment."""
        return [row for pipeline in PIPELINES for row in self._pipeline_rows(pipeline)]

    def _base(self, pipeline: str, budget: Budget | None) -> dict:
        geometry = self.geometry
        fields = {
            "model": geometry.name, "encoder": geometry.encoder.name, "lm": geometry.lm.name,
            "crops": geometry.crops, "batch": self.batch, "pipeline": pipeline,
            "zip_impl": _zip_impl(pipeline, self.timer.device),
        }
        if pipeline == FULL:
            fields["budget"] = geometry.full_tokens
        elif budget is not None:
            fields.update(budget=budget.visual_tokens(geometry.crops), k_dom=budget.k_dom, k_ctx=budget.k_ctx)
        return fields

    def _with_tokens(self, base: dict, visual_tokens: int) -> dict:
        prompt = self.geometry.system_tokens + self.geometry.question_tokens
        return {**base, "visual_tokens": visual_tokens, "lm_tokens": visual_tokens + prompt}

    def _downstream(self, pipeline: str, budget: Budget | None):
        return stages_after_encoder(pipeline, self.models, budget, self.batch, self.system_ids, self.question_ids)

    def _pipeline_rows(self, pipeline: str) -> list[dict]:
        budgets = [None] if pipeline == FULL else list(self.geometry.budgets)
        encoder = encoder_stage(pipeline, self.models)
        rows = []
        for budget in budgets:
            rows += self._ttft_rows(pipeline, budget, encoder)
        rows += self._encoder_rows(pipeline, encoder)
        for budget in budgets:
            rows += self._stage_rows(pipeline, budget, encoder)
        return rows

    def _ttft_rows(self, pipeline: str, budget: Budget | None, encoder: Stage) -> list[dict]:
        stages = [encoder, *self._downstream(pipeline, budget)]
        blocker = next((stage.graph_blocker for stage in stages if stage.graph_blocker), "")
        base = self._base(pipeline, budget)
        try:
            base = self._with_tokens(base, run_chain(stages[:-1], self.pixels).shape[1])
            results = _measure_call(self.timer, TTFT, partial(run_chain, stages, self.pixels), blocker,
                                    TTFT in self.graph_stages)
        except torch.cuda.OutOfMemoryError as error:
            results = [_oom_row(TTFT, error)]
        _release_memory()
        return [{**base, **result} for result in results]

    def _encoder_rows(self, pipeline: str, encoder: Stage) -> list[dict]:
        base = self._base(pipeline, None)
        if pipeline == FULL:
            base = self._with_tokens(base, self.geometry.full_tokens)
        try:
            results = _measure_call(self.timer, "encoder", partial(encoder.run, self.pixels),
                                    encoder.graph_blocker, "encoder" in self.graph_stages)
        except torch.cuda.OutOfMemoryError as error:
            results = [_oom_row("encoder", error)]
        _release_memory()
        return [{**base, **result} for result in results]

    def _stage_rows(self, pipeline: str, budget: Budget | None, encoder: Stage) -> list[dict]:
        """Zip, projector and LM prefill, each timed on the output of the stage before it."""
        base = self._base(pipeline, budget)
        results, current, value = [], "encoder", None
        try:
            value = encoder.run(self.pixels)
            for stage in self._downstream(pipeline, budget):
                current = stage.name
                results += _measure_call(self.timer, stage.name, partial(stage.run, value),
                                         stage.graph_blocker, stage.name in self.graph_stages)
                value = stage.run(value)
                if stage.name == "projector":
                    base = self._with_tokens(base, value.shape[1])
        except torch.cuda.OutOfMemoryError as error:
            results.append(_oom_row(current, error))
        del value
        _release_memory()
        return [{**base, **result} for result in results]
