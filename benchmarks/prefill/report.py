"""Markdown report of prefill rows: stage breakdown per model and batch, ratios, the paper's claim.

Every number comes from a row; a ratio is shown only where both of its rows were measured.
Definitions (eager medians unless a cell says otherwise):
- stage sum = encoder + zip + projector + LM prefill, each timed on its own;
- TTFT = the whole pipeline timed together, pixels to the first token's argmax;
- LM x = full LM prefill / this LM prefill; sum x and TTFT x likewise;
- Amdahl bound = full stage sum / this pipeline's encoder time: the encoder sees every token
  whatever the budget, so no budget makes the end-to-end ratio larger than this;
- vs published = published / visionzip_kernels at the same budget, for encoder + zip and for TTFT.
"""
from __future__ import annotations

from .paper import CLAIM_FASTER_MODEL, CLAIM_SLOWER_MODEL
from .rows import FULL, PACKAGE, PUBLISHED, STAGES, TINY, TTFT, number

TINY_NOTE = (
    "**Tiny mode: toy geometries in float32 on a CPU, run to exercise the benchmark. "
    "These numbers are not claims about VisionZip, this package or any GPU.**"
)
HEADER = (
    "| pipeline | visual tokens | encoder | zip | projector | LM prefill | stage sum | TTFT | peak MiB "
    "| LM x | sum x | TTFT x | Amdahl bound | vs published: enc+zip x | vs published: TTFT x |"
)


def format_ms(value: float | None) -> str:
    """Milliseconds with about three significant digits; ``-`` where missing."""
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def format_ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or not denominator:
        return "-"
    return f"{numerator / denominator:.2f}x"


class KeyedRows:
    """Rows (CSV strings) looked up by the values of the fields ``KEY`` names, in that order; the
    common part of the prefill and generate reports' indexes."""

    KEY: tuple[str, ...] = ()

    def __init__(self, rows: list[dict[str, str]]):
        self.rows = rows
        self._by_key = {tuple(r[field] for field in self.KEY): r for r in rows}

    def lookup(self, *key) -> dict | None:
        """The row whose ``KEY`` fields read ``key`` (values compared as strings), else ``None``."""
        return self._by_key.get(tuple(str(value) for value in key))

    def median_ms(self, *key) -> float | None:
        """The median of an ``ok`` row, else ``None``."""
        row = self.lookup(*key)
        return number(row["median_ms"]) if row and row["status"] == "ok" else None

    def models(self) -> list[str]:
        return list(dict.fromkeys(r["model"] for r in self.rows))

    def batches(self, model: str) -> list[int]:
        return sorted({int(r["batch"]) for r in self.rows if r["model"] == model})


class RowIndex(KeyedRows):
    """Prefill rows by (model, batch, pipeline, budget, stage, cuda_graph)."""

    KEY = ("model", "batch", "pipeline", "budget", "stage", "cuda_graph")

    def row(self, model, batch, pipeline, budget, stage, graph="no") -> dict | None:
        return self.lookup(model, batch, pipeline, budget, stage, graph)

    def ms(self, model, batch, pipeline, budget, stage, graph="no") -> float | None:
        return self.median_ms(model, batch, pipeline, budget, stage, graph)

    def budgets(self, model: str, batch: int) -> list[int]:
        return sorted({int(r["budget"]) for r in self.rows if r["model"] == model
                       and r["batch"] == str(batch) and r["pipeline"] != FULL and r["budget"]})

    def full_budget(self, model: str) -> str:
        return next((r["budget"] for r in self.rows if r["model"] == model and r["pipeline"] == FULL), "")


class PipelineResult:
    """One pipeline at one budget for one (model, batch): its stage medians, sum, TTFT and peak."""

    def __init__(self, index: RowIndex, model: str, batch: int, pipeline: str, budget: str):
        encoder_budget = budget if pipeline == FULL else ""
        self.index, self.key = index, (model, batch, pipeline, budget)
        self.encoder = index.ms(model, batch, pipeline, encoder_budget, "encoder")
        self.stages = {stage: index.ms(model, batch, pipeline, budget, stage) for stage in STAGES[1:]}
        self.stages["encoder"] = self.encoder
        if pipeline == FULL:
            self.stages["zip"] = 0.0
        self.ttft = index.ms(model, batch, pipeline, budget, TTFT)
        ttft_row = index.row(model, batch, pipeline, budget, TTFT)
        self.peak_mib = number(ttft_row["peak_mib"]) if ttft_row else None
        self.visual_tokens = ttft_row["visual_tokens"] if ttft_row else ""

    @property
    def stage_sum(self) -> float | None:
        values = [self.stages[stage] for stage in STAGES]
        return None if any(value is None for value in values) else sum(values)

    @property
    def encoder_and_zip(self) -> float | None:
        if self.encoder is None or self.stages["zip"] is None:
            return None
        return self.encoder + self.stages["zip"]

    def cell(self, stage: str) -> str:
        """Eager median, with the CUDA-graph replay's in parentheses where one was timed."""
        model, batch, pipeline, budget = self.key
        if stage == "zip" and pipeline == FULL:
            return "-"
        row_budget = "" if stage == "encoder" and pipeline != FULL else budget
        eager_row = self.index.row(model, batch, pipeline, row_budget, stage)
        if eager_row and eager_row["status"].startswith("oom"):
            return "oom"
        eager = self.index.ms(model, batch, pipeline, row_budget, stage)
        graph = self.index.ms(model, batch, pipeline, row_budget, stage, "yes")
        return format_ms(eager) if graph is None else f"{format_ms(eager)} ({format_ms(graph)})"


def pipeline_results(index: RowIndex, model: str, batch: int) -> list[PipelineResult]:
    """Full, then published and this package at each budget, smallest first."""
    results = [PipelineResult(index, model, batch, FULL, index.full_budget(model))]
    for budget in index.budgets(model, batch):
        results += [
            PipelineResult(index, model, batch, pipeline, str(budget)) for pipeline in (PUBLISHED, PACKAGE)
        ]
    return results


def model_table(index: RowIndex, model: str, batch: int) -> list[str]:
    """The markdown table of one (model, batch): full, then published and this package per budget."""
    results = pipeline_results(index, model, batch)
    full = results[0]
    lines = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    for result in results:
        pipeline, budget = result.key[2], result.key[3]
        reduced = pipeline != FULL
        published = PipelineResult(index, model, batch, PUBLISHED, budget) if pipeline == PACKAGE else None
        cells = [
            pipeline, result.visual_tokens or budget,
            *(result.cell(stage) for stage in STAGES), format_ms(result.stage_sum), result.cell(TTFT),
            "-" if result.peak_mib is None else f"{result.peak_mib:.0f}",
            format_ratio(full.stages["lm_prefill"], result.stages["lm_prefill"]) if reduced else "-",
            format_ratio(full.stage_sum, result.stage_sum) if reduced else "-",
            format_ratio(full.ttft, result.ttft) if reduced else "-",
            format_ratio(full.stage_sum, result.encoder) if reduced else "-",
            format_ratio(published.encoder_and_zip, result.encoder_and_zip) if published else "-",
            format_ratio(published.ttft, result.ttft) if published else "-",
        ]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return lines


def claim_lines(index: RowIndex) -> list[str]:
    """The paper's claim checked: the 13B model at its smallest budget vs the 7B at full tokens."""
    faster, slower = CLAIM_FASTER_MODEL, CLAIM_SLOWER_MODEL
    if faster not in index.models() or slower not in index.models():
        return [f"- {faster} vs {slower}: not both measured in these rows."]
    lines = []
    for batch in sorted(set(index.batches(faster)) & set(index.batches(slower))):
        slow = PipelineResult(index, slower, batch, FULL, index.full_budget(slower))
        budgets = index.budgets(faster, batch)
        for pipeline in (PACKAGE, PUBLISHED):
            if not budgets:
                continue
            fast = PipelineResult(index, faster, batch, pipeline, str(budgets[0]))
            if fast.ttft is None or slow.ttft is None:
                verdict = "not measured (see the rows' status)"
            else:
                fast_lm, slow_lm = fast.stages["lm_prefill"], slow.stages["lm_prefill"]
                verdict = "yes" if fast.ttft < slow.ttft else "no"
                verdict += (
                    f": TTFT {format_ms(fast.ttft)} ms vs {format_ms(slow.ttft)} ms "
                    f"(LM prefill {format_ms(fast_lm)} vs {format_ms(slow_lm)} ms)"
                )
            lines.append(
                f"- batch {batch}: {faster} at {budgets[0]} tokens ({pipeline}) faster than "
                f"{slower} at {slow.key[3]} tokens (full)? {verdict}"
            )
    return lines


def graph_lines(index: RowIndex) -> list[str]:
    """Where a CUDA graph was not used, and why (one line per pipeline, stage and reason)."""
    reasons = {}
    for row in index.rows:
        if row["cuda_graph"] == "yes" and row["status"] != "ok":
            reasons.setdefault((row["pipeline"], row["stage"], row["status"]), None)
    if not any(row["cuda_graph"] == "yes" for row in index.rows):
        return ["- No stage was captured in a CUDA graph in these rows (CPU run, or graphs turned off)."]
    return [f"- {pipeline} {stage}: {status}" for pipeline, stage, status in reasons] or [
        "- Every stage asked for was captured."
    ]


def oom_lines(index: RowIndex) -> list[str]:
    return [
        f"- {r['model']} batch {r['batch']} {r['pipeline']} {r['budget']} {r['stage']}: {r['status']}"
        for r in index.rows if r["status"].startswith("oom")
    ]


def environment_lines(rows: list[dict[str, str]]) -> list[str]:
    fields = ("device", "dtype", "torch", "triton", "transformers", "cuda", "commit")
    runs = dict.fromkeys(tuple(row[field] for field in fields) for row in rows)
    return [
        "- " + ", ".join(f"{field} {value}" for field, value in zip(fields, run)) for run in runs
    ]


def render(rows: list[dict[str, str]], data_file: str) -> str:
    """The whole markdown document; the tables come last."""
    index = RowIndex(rows)
    tiny = any(row["mode"] == TINY for row in rows)
    lines = ["# Prefill: full tokens vs published VisionZip vs visionzip_kernels", ""]
    if tiny:
        lines += [TINY_NOTE, ""]
    lines += [f"Rows: `{data_file}`. Measured on:", *environment_lines(rows), ""]
    lines += [
        "Times are in ms, the median of per-round medians: every measurement of a (model, batch) "
        "is timed interleaved with the others, round after round (the rows give the rounds, p20/p80 "
        "and the fastest and slowest round); `a (b)` = eager (CUDA-graph replay). "
        "Stage sum = encoder + zip + projector + LM prefill, each timed alone; TTFT = the whole "
        "pipeline timed together, pixels to the first token. Ratios are full / this pipeline; "
        "Amdahl bound = full stage sum / this pipeline's encoder time (the encoder sees every token "
        "whatever the budget); vs published = published / visionzip_kernels at the same budget. "
        "Peak MiB: the TTFT run's peak allocation, with every model's weights (both encoders, "
        "projector, LM) and the timer's 256 MiB cache-flush buffer resident.",
        "",
        "## The paper's claim: the 13B model with VisionZip faster than the 7B with every token",
        *claim_lines(index),
        "",
        "## Where no CUDA graph was timed",
        *graph_lines(index),
        "",
    ]
    if oom_lines(index):
        lines += ["## Out of memory", *oom_lines(index), ""]
    for model in index.models():
        first = next(r for r in rows if r["model"] == model)
        for batch in index.batches(model):
            crops = f"{first['crops']} crop" + ("" if first["crops"] == "1" else "s")
            lines += [f"## {model} ({first['encoder']} x {crops} + {first['lm']}), batch {batch}", ""]
            lines += [*model_table(index, model, batch), ""]
    return "\n".join(lines)
