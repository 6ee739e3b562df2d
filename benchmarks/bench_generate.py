"""Hugging Face ``generate`` on LLaVA: full tokens vs published VisionZip vs this package's recipes.

The path users run. Real ``LlavaForConditionalGeneration`` (LLaVA-1.5-7B: CLIP-L/14-336 +
Vicuna-7B) and ``LlavaNextForConditionalGeneration`` (LLaVA-NeXT-7B: the same tower + Mistral-7B)
built from their configs with random weights in bfloat16 on the GPU, the real processors' outputs
for one 672 x 672 image per prompt (LLaVA-NeXT: 5 crops), batches 1 and 8. For each configuration
(``generate/configs.py``: full tokens in stock HF; the published method patched into the same
model; this package eager, with ``cuda_graphs=True``, and with the static cache and a compiled
language model) it times ``generate(max_new_tokens=1)`` (TTFT) and a 32-token ``generate``, all
configurations interleaved round after round, and prints the issue's two target ratios: the
fastest recipe vs full tokens, and this package eager vs the published method at each budget.

Without CUDA, or with ``--tiny``, it runs toy models in float32 on the CPU (the compiled
configuration through Dynamo only, ``backend="eager"``): this exercises the script (CI), and its
rows are marked ``mode=tiny``: they are not claims.

With ``--publish`` rows go to ``benchmarks/results/generate_<device>.csv`` (merged with earlier runs by model and
batch), with a markdown table (``.md``) and a TTFT chart (``.png``, needs matplotlib).

    python benchmarks/bench_generate.py                                  # both models, batches 1 and 8
    python benchmarks/bench_generate.py --models LLaVA-NeXT-7B --batches 1
    python benchmarks/bench_generate.py --tiny --results-dir /tmp/generate
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from dataclasses import replace

import torch

from bench_prefill import progress, publish, select_geometries
from generate.chart import write_chart
from generate.configs import CONFIGS, GPU_COMPILE, TINY_COMPILE
from generate.measure import GenerateMeasurement, Options
from generate.models import build_model, make_processor
from generate.report import render
from generate.rows import FIELDS, results_stem
from prefill.geometry import paper_geometries, tiny_geometries
from prefill.models import build_encoder
from prefill.rows import FULL_SIZE, TINY, merge_rows, read_rows, write_rows
from prefill.timing import RepetitionPolicy, Timer
from run_environment import add_results_options, device_slug, model_run_environment, results_folder

MODELS = ("LLaVA-1.5-7B", "LLaVA-NeXT-7B")
GPU_POLICY = RepetitionPolicy(warmup=3, min_reps=5, max_reps=15, target_ms=500.0, rounds=5)
TINY_POLICY = RepetitionPolicy(warmup=1, min_reps=2, max_reps=2, target_ms=0.0, rounds=2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true",
                        help="toy models in float32 on the CPU (automatic without CUDA)")
    add_results_options(parser, "rows, table and chart")
    parser.add_argument("--models", help=f"comma-separated model names (default: {','.join(MODELS)})")
    parser.add_argument("--batches", help="comma-separated batch sizes (default: 1,8; tiny: 1,2)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {','.join(CONFIGS)}")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens of the timed generate (default 32)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default: 5; tiny: 2)")
    parser.add_argument("--all-budgets", action="store_true",
                        help="vzk_graphs and vzk_compile at every budget, not only the smallest")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tiny = args.tiny or not torch.cuda.is_available()
    device = torch.device("cpu") if tiny else torch.device("cuda")
    dtype = torch.float32 if tiny else torch.bfloat16
    mode = TINY if tiny else FULL_SIZE
    configs = tuple(args.configs.split(","))
    if set(configs) - set(CONFIGS) or args.new_tokens < 2:
        raise SystemExit(f"--configs must be among {CONFIGS} and --new-tokens at least 2")
    paper = [g for g in (tiny_geometries() if tiny else paper_geometries()) if g.name in MODELS]
    geometries = select_geometries(tuple(paper), args.models)
    if tiny:
        torch.set_num_threads(1)  # a smoke test: one thread is fastest on a small, shared CI machine
    policy = TINY_POLICY if tiny else GPU_POLICY
    timer = Timer(device, replace(policy, rounds=args.rounds) if args.rounds else policy)
    options = Options(configs, args.new_tokens, args.all_budgets, TINY_COMPILE if tiny else GPU_COMPILE)
    env = model_run_environment(device, mode, dtype)
    torch.manual_seed(0)

    started = time.perf_counter()
    with results_folder(args.results_dir) as folder:
        stem = results_stem(folder, device_slug(device), mode)
        csv_path = stem.with_suffix(".csv")
        earlier_rows, new_rows = read_rows(csv_path), []
        for geometry in geometries:
            model = build_model(geometry, dtype, device)
            eager_tower = build_encoder(geometry.encoder, "eager", dtype, device)
            eager_tower.load_state_dict(model.model.vision_tower.state_dict())
            processor = make_processor(geometry)
            batches = [int(b) for b in args.batches.split(",")] if args.batches else geometry.batches
            for batch in batches:
                progress(f"[{time.perf_counter() - started:6.1f} s] {geometry.name} batch {batch}")
                measurement = GenerateMeasurement(geometry, model, processor, eager_tower, batch, timer, dtype, options)
                new_rows += [{**env, **row} for row in measurement.rows()]
                del measurement
                write_rows(csv_path, merge_rows(earlier_rows, new_rows), FIELDS)  # kept if a later step fails
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            del model, eager_tower
        publish(csv_path, stem, render, write_chart, started, kept=args.results_dir is not None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
