"""Measures one model geometry at one batch size: every pipeline, budget and stage, as rows.

First every measurement is planned, per pipeline in this order:
1. time to first token for each budget, the whole chain from pixels; the peak memory of every
   pipeline's chain is taken before anything else is planned, with only the weights and the
   pixels resident, so that it is the pipeline's peak;
2. the encoder stage (budget-independent for the two VisionZip pipelines);
3. from the encoder's output, zip (VisionZip pipelines), projector and LM prefill for each budget.
Each is planned eagerly and, where asked and possible, as a CUDA-graph replay (captured while
planning). Then all of them are timed together, interleaved (``Timer.interleave``): the pipelines
are compared within each round, not one after another.
A measurement that cannot be made (out of memory, no graph) becomes a row saying so.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch

from visionzip_kernels.ops import attention_importance, zip_tokens

from .geometry import Budget, ModelGeometry
from .models import Models, prompt_ids
from .pipelines import Stage, encoder_stage, run_chain, stages_after_encoder
from .rows import FULL, PACKAGE, PIPELINES, PUBLISHED, TTFT
from .timing import GraphCaptureError, Memory, Timer, timing_fields


def _zip_impl(pipeline: str, device: torch.device) -> str:
    if pipeline == PACKAGE:
        importance = attention_importance.available_backends(device)[0]
        zipper = zip_tokens.available_backends(device)[0]
        return f"attention_importance[{importance}] + zip_tokens[{zipper}]"
    return "published_zip_tokens[eager torch]" if pipeline == PUBLISHED else ""


def _memory_fields(memory: Memory | None) -> dict:
    if memory is None:
        return {}
    return {"peak_mib": round(memory.peak_mib, 1), "resident_mib": round(memory.resident_mib, 1)}


def _oom_status(error: torch.cuda.OutOfMemoryError) -> str:
    return f"oom: {str(error).splitlines()[0][:160]}"


def _release_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class TtftCall:
    """One TTFT measurement before it is planned: its row fields so far, the whole chain from
    pixels, why no graph can capture it (``""`` if one can) and its peak memory."""

    base: dict
    chain: Callable[[], object]
    graph_blocker: str
    memory: Memory | None


@dataclass
class Planned:
    """One row: ``call`` to be timed, or ``None`` where the row's ``status`` says why not."""

    row: dict
    call: Callable[[], object] | None = None


def _plan_call(timer: Timer, stage: str, fn: Callable, graph_blocker: str, try_graph: bool,
               memory: Memory | None) -> list[Planned]:
    """The eager measurement of ``fn`` (with its peak ``memory``); then, if ``try_graph``, its
    CUDA-graph replay, captured now."""
    eager = Planned({"stage": stage, "cuda_graph": "no", "status": "ok", **_memory_fields(memory)}, fn)
    if not try_graph:
        return [eager]
    graph = {"stage": stage, "cuda_graph": "yes"}
    if graph_blocker:
        return [eager, Planned({**graph, "status": f"not capturable: {graph_blocker}"})]
    try:
        return [eager, Planned({**graph, "status": "ok"}, timer.capture_graph(fn))]
    except GraphCaptureError as error:
        return [eager, Planned({**graph, "status": f"graph capture failed: {error}"})]
    except torch.cuda.OutOfMemoryError as error:  # the graph's private pool did not fit beside the others
        return [eager, Planned({**graph, "status": _oom_status(error)})]


def _oom(stage: str, error: torch.cuda.OutOfMemoryError) -> Planned:
    return Planned({"stage": stage, "cuda_graph": "no", "status": _oom_status(error)})


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
        ttft_calls = {pipeline: [self._ttft_call(pipeline, budget) for budget in self._budgets(pipeline)]
                      for pipeline in PIPELINES}  # peak memory first, with nothing else resident
        planned = [entry for pipeline in PIPELINES for entry in self._plan_pipeline(pipeline, ttft_calls[pipeline])]
        timed = [entry for entry in planned if entry.call is not None]
        try:
            timings = self.timer.interleave([entry.call for entry in timed])
        except torch.cuda.OutOfMemoryError as error:  # graphs held for the rounds left too little
            for entry in timed:
                entry.row.update(status=_oom_status(error))
                entry.call = None
            timings = []
        for entry, timing in zip(timed, timings):
            entry.row.update(timing_fields(timing))
        rows = [entry.row for entry in planned]
        del planned, timed
        _release_memory()
        return rows

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

    def _budgets(self, pipeline: str) -> list[Budget | None]:
        return [None] if pipeline == FULL else list(self.geometry.budgets)

    def _ttft_call(self, pipeline: str, budget: Budget | None) -> TtftCall | Planned:
        """One TTFT measurement with its peak memory, or an out-of-memory row."""
        stages = [encoder_stage(pipeline, self.models), *self._downstream(pipeline, budget)]
        blocker = next((stage.graph_blocker for stage in stages if stage.graph_blocker), "")
        base = self._base(pipeline, budget)
        try:
            base = self._with_tokens(base, run_chain(stages[:-1], self.pixels).shape[1])
            chain = partial(run_chain, stages, self.pixels)
            return TtftCall(base, chain, blocker, self.timer.memory(chain))
        except torch.cuda.OutOfMemoryError as error:
            return self._with_base(base, [_oom(TTFT, error)])[0]

    def _plan_pipeline(self, pipeline: str, ttft_calls: list[TtftCall | Planned]) -> list[Planned]:
        planned = []
        for call in ttft_calls:
            planned += [call] if isinstance(call, Planned) else self._plan_ttft(call)
        encoder = encoder_stage(pipeline, self.models)
        planned += self._plan_encoder(pipeline, encoder)
        for budget in self._budgets(pipeline):
            planned += self._plan_stages(pipeline, budget, encoder)
        return planned

    def _plan_ttft(self, call: TtftCall) -> list[Planned]:
        try:
            planned = _plan_call(self.timer, TTFT, call.chain, call.graph_blocker,
                                 TTFT in self.graph_stages, call.memory)
        except torch.cuda.OutOfMemoryError as error:
            planned = [_oom(TTFT, error)]
        return self._with_base(call.base, planned)

    def _plan_encoder(self, pipeline: str, encoder: Stage) -> list[Planned]:
        base = self._base(pipeline, None)
        if pipeline == FULL:
            base = self._with_tokens(base, self.geometry.full_tokens)
        try:
            run = partial(encoder.run, self.pixels)
            planned = _plan_call(self.timer, "encoder", run, encoder.graph_blocker,
                                 "encoder" in self.graph_stages, self.timer.memory(run))
        except torch.cuda.OutOfMemoryError as error:
            planned = [_oom("encoder", error)]
        return self._with_base(base, planned)

    def _plan_stages(self, pipeline: str, budget: Budget | None, encoder: Stage) -> list[Planned]:
        """Zip, projector and LM prefill, each on the output of the stage before it (computed now
        and kept until the rounds are timed)."""
        base = self._base(pipeline, budget)
        planned, current = [], "encoder"
        try:
            value = encoder.run(self.pixels)
            for stage in self._downstream(pipeline, budget):
                current = stage.name
                run = partial(stage.run, value)
                planned += _plan_call(self.timer, stage.name, run, stage.graph_blocker,
                                      stage.name in self.graph_stages, self.timer.memory(run))
                value = stage.run(value)
                if stage.name == "projector":
                    base = self._with_tokens(base, value.shape[1])
        except torch.cuda.OutOfMemoryError as error:
            planned.append(_oom(current, error))
        return self._with_base(base, planned)

    @staticmethod
    def _with_base(base: dict, planned: list[Planned]) -> list[Planned]:
        for entry in planned:
            entry.row = {**base, **entry.row}
        return planned
