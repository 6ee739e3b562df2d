"""Prints the README's prefill results (markdown) from the committed prefill rows.

Reads every ``benchmarks/results/prefill_*.csv`` written by ``bench_prefill.py`` and sets, per
device, the time to first token of full tokens, the published VisionZip and this package, eager and
as a CUDA-graph replay, beside the paper's numbers. README.md holds this output verbatim between
the ``<!-- prefill results -->`` markers (a test compares them). Rows of the CPU smoke-test mode
(``mode=tiny``) are left out, or with ``--include-tiny`` shown under a heading that says they are
not claims. Needs neither torch nor a GPU.

    python benchmarks/results_readme.py > /tmp/results.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefill.paper import CLAIM_FASTER_MODEL, CLAIM_SLOWER_MODEL, PAPER, PAPER_DEVICE, PAPER_PREFILL
from prefill.report import PipelineResult, RowIndex, claim_lines, format_ratio
from prefill.rows import FULL, PACKAGE, PUBLISHED, TINY, TTFT, read_rows

RESULTS_DIR = Path(__file__).resolve().parent / "results"
HEADER = (
    "| model | batch | visual tokens | TTFT ms, eager (graph): full / published / visionzip_kernels "
    "| visionzip_kernels vs full: eager (graph) | vs published, eager | paper |"
)


def paper_cell(model: str, batch: int, budget: int) -> str:
    for claim in PAPER_PREFILL:
        if (claim.model, batch, budget) == (model, 1, claim.reduced_tokens):
            return (
                f"prefill {claim.full_ms:g} -> {claim.reduced_ms:g} ms ({claim.speedup:.1f}x), "
                f"{claim.full_tokens} -> {claim.reduced_tokens} tokens, {PAPER_DEVICE}"
            )
    return ""


def graph_ttft(index: RowIndex, result: PipelineResult) -> float | None:
    """The CUDA-graph replay's TTFT of ``result``'s pipeline, where one was timed."""
    model, batch, pipeline, budget = result.key
    return index.ms(model, batch, pipeline, budget, TTFT, "yes")


def ratio_cell(index: RowIndex, full: PipelineResult, package: PipelineResult) -> str:
    eager = format_ratio(full.ttft, package.ttft)
    graph = format_ratio(graph_ttft(index, full), graph_ttft(index, package))
    return eager if graph == "-" else f"{eager} ({graph})"


def device_section(rows: list[dict[str, str]]) -> list[str]:
    """One device's table: per model, batch and budget, full vs published vs this package."""
    index = RowIndex(rows)
    first = rows[0]
    heading = f"#### Prefill on {first['device']}"
    if first["mode"] == TINY:
        heading += " - tiny mode: toy geometries in float32, run to exercise the benchmark; not claims"
    commits = ", ".join(sorted({row["commit"] for row in rows}))
    dates = sorted({row["timestamp"][:10] for row in rows})
    lines = [
        heading, "",
        f"{first['dtype']}, torch {first['torch']}, triton {first['triton']}, transformers "
        f"{first['transformers']}, CUDA {first['cuda']}; commit {commits}, {' to '.join(dict.fromkeys([dates[0], dates[-1]]))}.", "",
        HEADER, "|" + "---|" * (HEADER.count("|") - 1),
    ]
    for model in index.models():
        for batch in index.batches(model):
            full = PipelineResult(index, model, batch, FULL, index.full_budget(model))
            for budget in index.budgets(model, batch):
                published = PipelineResult(index, model, batch, PUBLISHED, str(budget))
                package = PipelineResult(index, model, batch, PACKAGE, str(budget))
                cells = [
                    model, batch, f"{full.key[3]} -> {budget}",
                    f"{full.cell(TTFT)} / {published.cell(TTFT)} / {package.cell(TTFT)}",
                    ratio_cell(index, full, package),
                    format_ratio(published.ttft, package.ttft),
                    paper_cell(model, batch, budget),
                ]
                lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    lines += [
        "",
        f"The paper's claim, {CLAIM_FASTER_MODEL} with VisionZip faster than {CLAIM_SLOWER_MODEL} "
        "with every token, on this device:",
        *claim_lines(index),
        "",
    ]
    return lines


def render(rows: list[dict[str, str]], include_tiny: bool) -> str:
    tiny_rows = [row for row in rows if row["mode"] == TINY]
    shown = rows if include_tiny else [row for row in rows if row["mode"] != TINY]
    lines = [
        "End-to-end prefill, `benchmarks/bench_prefill.py`: LLaVA-1.5 (576 visual tokens) and "
        "LLaVA-NeXT (5 crops, 2880) geometries with random weights, time to first token (TTFT), "
        "pixels to the first token. Three pipelines side by side: every token (full), the published "
        "VisionZip code (eager attention in every layer, `output_attentions=True`; it synchronises "
        "the host, so no CUDA graph can capture it), and this package (SDPA encoder to the "
        "penultimate layer, `attention_importance`, fused `zip_tokens`). Medians of interleaved "
        "rounds, eager and, in parentheses, replayed as a CUDA graph; p20/p80 and repeats in the "
        "rows; x = full (or published) / visionzip_kernels. Stage breakdowns and peak memory: "
        "`benchmarks/results/prefill_<device>.md`.", "",
        f"Paper ({PAPER}, {PAPER_DEVICE}): LLaVA-NeXT-7B prefill 218 ms at 2880 visual tokens, "
        f"27.8 ms at 160 (7.8x); {CLAIM_FASTER_MODEL} at 160 tokens faster than "
        f"{CLAIM_SLOWER_MODEL} at 2880.", "",
    ]
    if not shown:
        lines += [
            "No GPU measurement is committed yet: run `python benchmarks/bench_prefill.py --publish` "
            "on a CUDA GPU and commit `benchmarks/results/prefill_<device>.*`.", "",
        ]
    groups = {}
    for row in shown:
        groups.setdefault((row["device"], row["mode"]), []).append(row)
    for group_rows in groups.values():
        lines += device_section(group_rows)
    if tiny_rows and not include_tiny:
        lines += [f"({len(tiny_rows)} tiny-mode rows, a CPU smoke test, are left out: they are not claims.)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                        help="where the prefill rows are read (default: benchmarks/results/)")
    parser.add_argument("--include-tiny", action="store_true", help="show tiny-mode rows, labelled as not claims")
    args = parser.parse_args(argv)
    rows = [row for path in sorted(args.results_dir.glob("prefill_*.csv")) for row in read_rows(path)]
    print(render(rows, args.include_tiny))
    return 0


if __name__ == "__main__":
    sys.exit(main())
