"""End-to-end prefill: full tokens vs the published VisionZip vs this package, side by side.

For LLaVA-1.5-7B/13B (CLIP-L/14-336, 576 visual tokens, budgets 64/128/192) and LLaVA-NeXT-7B/13B
(5 crops, 2880 visual tokens, budgets 160/320/640), built from configs with random weights in
bfloat16 on the GPU, this times each stage (vision encoder, zip, projector, LM prefill) alone and
the whole pipeline to the first token (TTFT), eagerly and as CUDA-graph replays where a graph
applies, records peak GPU memory, and prints the ratios: LM prefill and end-to-end full/VisionZip,
the Amdahl bound (full end-to-end / encoder time), this package vs the published code, and the
paper's claim that LLaVA-NeXT-13B at 160 tokens is faster than LLaVA-NeXT-7B at 2880.

Without CUDA, or with ``--tiny``, it runs toy geometries in float32 on the CPU in seconds: this
exercises the script (CI), and its rows are marked ``mode=tiny``: they are not claims.

With ``--publish`` rows go to ``benchmarks/results/prefill_<device>.csv`` (merged with earlier runs by model and
batch), with a markdown table (``.md``) and a stage-breakdown chart (``.png``, needs matplotlib).

    python benchmarks/bench_prefill.py                          # everything the device runs
    python benchmarks/bench_prefill.py --models LLaVA-1.5-7B --batches 1
    python benchmarks/bench_prefill.py --tiny --results-dir /tmp/prefill
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

from prefill.chart import matplotlib_missing_note, write_chart
from prefill.geometry import ModelGeometry, paper_geometries, tiny_geometries
from prefill.measure import ModelMeasurement
from prefill.models import build_models
from prefill.report import render
from prefill.rows import FULL_SIZE, STAGES, TINY, TTFT, merge_rows, read_rows, results_stem, write_rows
from prefill.timing import GPU_POLICY, TINY_POLICY, Timer
from run_environment import add_results_options, device_slug, model_run_environment, results_folder

GRAPH_CHOICES = {"all": frozenset([*STAGES, TTFT]), "zip": frozenset(["zip"]), "none": frozenset()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true",
                        help="toy geometries in float32 on the CPU (automatic without CUDA)")
    add_results_options(parser, "rows, table and chart")
    parser.add_argument("--models", help="comma-separated model names (default: all four)")
    parser.add_argument("--batches", help="comma-separated batch sizes (default: 1 and 8; tiny: 1 and 2)")
    parser.add_argument("--graphs", choices=sorted(GRAPH_CHOICES), default="all",
                        help="stages also timed as CUDA-graph replays on a GPU (default: all that apply)")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: rewrite the table and chart of every prefill_*.csv under "
                             "--results-dir DIR (or benchmarks/results/ with --publish) from its rows")
    args = parser.parse_args(argv)
    if args.report_only and args.results_dir is None:
        parser.error("--report-only rewrites the reports of existing rows: give --results-dir DIR or --publish")
    return args


def progress(message: str) -> None:
    """Progress on stderr, so that stdout ends with the report."""
    print(message, file=sys.stderr, flush=True)


def publish(csv_path: Path, stem: Path, render, write_chart, started: float, kept: bool) -> None:
    """The report of every row in ``csv_path``: ``render`` to ``<stem>.md`` and stdout,
    ``write_chart`` to ``<stem>.png`` (a note where matplotlib is missing). ``kept``: the folder is
    the one asked for (``--results-dir``, ``--publish``), not a temporary one."""
    rows = read_rows(csv_path)
    document = render(rows, csv_path.name)
    stem.with_suffix(".md").write_text(document + "\n")
    if not write_chart(rows, stem.with_suffix(".png")):
        progress(matplotlib_missing_note())
    if kept:
        progress(f"[{time.perf_counter() - started:6.1f} s] wrote {csv_path}, {stem.with_suffix('.md').name}")
    else:
        progress(f"[{time.perf_counter() - started:6.1f} s] rows, table and chart not written "
                 "(--results-dir DIR or --publish writes them)")
    print(document)


def select_geometries(geometries: tuple[ModelGeometry, ...], names: str | None) -> tuple[ModelGeometry, ...]:
    """The geometries named in ``names`` (comma-separated), all of them where ``None``."""
    if not names:
        return geometries
    wanted = names.split(",")
    unknown = set(wanted) - {geometry.name for geometry in geometries}
    if unknown:
        raise SystemExit(f"unknown --models {sorted(unknown)}; known: {[g.name for g in geometries]}")
    return tuple(geometry for geometry in geometries if geometry.name in wanted)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        for csv_path in sorted(args.results_dir.glob("prefill_*.csv")):
            publish(csv_path, csv_path.with_suffix(""), render, write_chart, time.perf_counter(), kept=True)
        return 0
    tiny = args.tiny or not torch.cuda.is_available()
    device = torch.device("cpu") if tiny else torch.device("cuda")
    dtype = torch.float32 if tiny else torch.bfloat16
    mode = TINY if tiny else FULL_SIZE
    geometries = select_geometries(tiny_geometries() if tiny else paper_geometries(), args.models)
    if tiny:
        torch.set_num_threads(1)  # a smoke test: one thread is fastest on a small, shared CI machine
    graph_stages = frozenset() if tiny else GRAPH_CHOICES[args.graphs]
    timer = Timer(device, TINY_POLICY if tiny else GPU_POLICY)
    env = model_run_environment(device, mode, dtype)
    torch.manual_seed(0)

    started = time.perf_counter()
    with results_folder(args.results_dir) as folder:
        stem = results_stem(folder, device_slug(device), mode)
        csv_path = stem.with_suffix(".csv")
        earlier_rows, new_rows = read_rows(csv_path), []
        with torch.inference_mode():
            for geometry in geometries:
                models = build_models(geometry, dtype, device)
                batches = [int(b) for b in args.batches.split(",")] if args.batches else geometry.batches
                for batch in batches:
                    progress(f"[{time.perf_counter() - started:6.1f} s] {geometry.name} batch {batch}")
                    measurement = ModelMeasurement(geometry, models, batch, timer, graph_stages, dtype)
                    new_rows += [{**env, **row} for row in measurement.rows()]
                    del measurement
                    write_rows(csv_path, merge_rows(earlier_rows, new_rows))  # kept if a later step fails
                del models
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        publish(csv_path, stem, render, write_chart, started, kept=args.results_dir is not None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
