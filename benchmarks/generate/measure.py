"""Measures one model at one batch size: every configuration and budget, as rows.

Each configuration is built as a twin of the model (``configs.py``) and run once: ``generate`` of
``new_tokens`` tokens, which captures its CUDA graphs, compiles what it compiles, and gives the
tokens that the rows compare with ``vzk_eager``'s at the same budget. Then TTFT
(``generate(max_new_tokens=1)``) and the ``new_tokens``-token ``generate`` of every configuration
are timed together, interleaved (``prefill/timing.py``'s ``Timer.interleave``); ``vzk_eager``'s
TTFT at the smallest budget is timed twice, as two entries of the same rounds, to show how well
a measurement reproduces. A configuration that fails to build or run becomes rows whose
``status`` says why; the others are measured.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch

from prefill.geometry import Budget, ModelGeometry
from prefill.timing import Timer, timing_fields

from .configs import FULL, RECIPES, VZK_EAGER, Config, build_config, planned_budgets, processed_inputs
from .rows import GENERATE, TTFT, TTFT_AGAIN


@dataclass
class Planned:
    """One row of configuration ``name`` at ``budget``: ``call`` to be timed, or ``None`` where
    the row's ``status`` says why not."""

    name: str
    budget: Budget | None
    row: dict
    call: Callable[[], object] | None = None


@dataclass(frozen=True)
class Options:
    """What to measure: configuration names, tokens generated, every budget for every
    configuration or not, and the ``torch.compile`` options of ``vzk_compile``."""

    configs: tuple[str, ...]
    new_tokens: int
    all_budgets: bool
    compile_options: dict


class GenerateMeasurement:
    """Measures ``geometry``'s ``model`` at one ``batch`` size under ``options``."""

    def __init__(self, geometry: ModelGeometry, model, processor, eager_tower, batch: int, timer: Timer,
                 dtype: torch.dtype, options: Options):
        self.geometry, self.model, self.processor = geometry, model, processor
        self.eager_tower, self.batch, self.timer, self.dtype, self.options = eager_tower, batch, timer, dtype, options
        self._inputs: dict[Budget | None, dict] = {}

    def rows(self) -> list[dict]:
        """Every (configuration, budget, metric) row, without the run environment."""
        torch._dynamo.reset()  # compiled graphs of an earlier model or batch are not this one's
        planned, tokens = [], {}
        for name in self.options.configs:
            for budget in planned_budgets(name, self.geometry, self.options.all_budgets):
                planned += self._plan(name, budget, tokens)
        for entry in planned:
            entry.row["tokens_vs_vzk_eager"] = _compare_tokens(entry, tokens)
        timed = [entry for entry in planned if entry.call is not None]
        for entry, timing in zip(timed, self.timer.interleave([entry.call for entry in timed])):
            entry.row.update(timing_fields(timing))
        return [entry.row for entry in planned]

    def _plan(self, name: str, budget: Budget | None, tokens: dict) -> list[Planned]:
        base = self._base(name, budget)
        new_tokens = self.options.new_tokens
        try:
            config = build_config(name, budget, self.model, self.eager_tower, self._inputs_for(budget),
                                  self.options.compile_options)
            tokens[(name, budget)] = config.generate(new_tokens)
        except Exception as error:  # a configuration that cannot run is a row saying why
            status = "error: " + f"{type(error).__name__}: {error}".splitlines()[0][:200]
            return [Planned(name, budget, {**base, "metric": metric, "status": status}) for metric in (TTFT, GENERATE)]
        base.update(visual_tokens=config.visual_tokens, prompt_tokens=config.prompt_tokens)
        metrics = [(TTFT, 1), (GENERATE, new_tokens)]
        if name == VZK_EAGER and budget == self.geometry.budgets[0]:
            metrics.append((TTFT_AGAIN, 1))  # the same call again: how well the timing reproduces
        return [
            Planned(name, budget, {**base, "metric": metric, "new_tokens": count, "status": "ok"},
                    partial(_generate, config, count))
            for metric, count in metrics
        ]

    def _inputs_for(self, budget: Budget | None) -> dict:
        if budget not in self._inputs:
            self._inputs[budget] = processed_inputs(
                self.model, self.processor, self.geometry, self.batch, budget, self.dtype
            )
        return self._inputs[budget]

    def _base(self, name: str, budget: Budget | None) -> dict:
        geometry = self.geometry
        fields = {
            "model": geometry.name, "encoder": geometry.encoder.name, "lm": geometry.lm.name,
            "crops": geometry.crops, "batch": self.batch, "config": name, "recipe": RECIPES[name],
        }
        if budget is not None:
            fields.update(budget=budget.visual_tokens(geometry.crops), k_dom=budget.k_dom, k_ctx=budget.k_ctx)
        return fields


def _generate(config: Config, new_tokens: int) -> None:
    config.generate(new_tokens)


def _compare_tokens(entry: Planned, tokens: dict) -> str:
    """``same``/``differ``: the configuration's tokens against ``vzk_eager``'s at its budget;
    ``reference`` for ``vzk_eager``; empty for ``full`` or where either did not run."""
    if entry.name == VZK_EAGER:
        return "reference"
    mine, eager = tokens.get((entry.name, entry.budget)), tokens.get((VZK_EAGER, entry.budget))
    if entry.name == FULL or mine is None or eager is None:
        return ""
    return "same" if torch.equal(mine, eager) else "differ"
