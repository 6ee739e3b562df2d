"""LLaVA-NeXT served by vLLM: requests/s and time to first token, full tokens vs VisionZip.

The model is LLaVA-NeXT-7B's geometry (CLIP-L/14-336 and Mistral-7B; 672 x 672 images, a base
crop and a 2 x 2 grid: 5 crops of 576 patches, 2928 placeholders without VisionZip, 5 x 32 + 2 =
162 with ``dominant=27, contextual=5`` per crop), with vLLM's random weights (``load_format=
"dummy"``: only the config and the processor are written, to a temporary folder). Two engines
serve it, one without and one with the switch (``hf_overrides={"visionzip": ...}``), side by side
(``AsyncLLM``, each with its engine-core process). At each concurrency ``c`` of ``--concurrency``,
``c`` clients send ``--requests`` requests (``c`` by default, at least 4) one after another, each
with its own random image (no cache hits) and ``--max-tokens`` generated tokens; a request's TTFT
is from its submission to its first token, requests/s is finished requests over the level's wall
time. Rounds interleave the two engines (the order alternates per round); a row gives the median
requests/s of the rounds with p20/p80, and TTFT median and p90 over every request of the rounds.

``--lm-layers`` keeps only the first layers of the language model (at its real width), for CPUs,
where a full 7B prefill of 2928 tokens would take minutes per request; the rows say how many.
``--tiny`` serves a toy geometry in seconds (CI); its rows are marked ``mode=tiny`` and are not
claims. Rows go to ``benchmarks/results/vllm_<device>.csv`` (``_tiny`` in tiny mode).

    python benchmarks/bench_vllm.py                                   # GPU: concurrency 1, 8, 32
    python benchmarks/bench_vllm.py --lm-layers 2 --concurrency 1 4 --max-tokens 8   # CPU rows
    python benchmarks/bench_vllm.py --tiny --results-dir /tmp/vllm-bench
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import LlavaNextConfig

from generate.models import IMAGE_ID, PAD_ID, grid_pinpoints, make_processor
from prefill.geometry import (
    CLIP_L_336,
    MISTRAL_7B,
    Budget,
    EncoderGeometry,
    LanguageModelGeometry,
    ModelGeometry,
)
from run_environment import add_results_options, device_slug, model_run_environment, save_rows

FULL, ZIPPED = "full", "visionzip"
LLAVA_NEXT_7B = ModelGeometry("LLaVA-NeXT-7B", CLIP_L_336, 5, (Budget(27, 5),), MISTRAL_7B, (), 35, 60)
# vLLM's CPU attention needs a head size of at least 32.
TINY = ModelGeometry(
    "LLaVA-NeXT-tiny",
    EncoderGeometry("CLIP-tiny", 3, 128, 4, 256, 56, 14),
    5,
    (Budget(5, 3),),
    LanguageModelGeometry("Llama-tiny", "llama", 128, 2, 4, 2, 256, 256),
    (),
    5,
    7,
)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def write_checkpoint(geometry: ModelGeometry, folder: Path) -> None:
    """The geometry's LLaVA-NeXT config and processor (no weights: vLLM makes random ones)."""
    config = LlavaNextConfig(
        vision_config=geometry.encoder.config(),
        text_config=geometry.lm.config(),
        image_token_id=IMAGE_ID,
        image_grid_pinpoints=grid_pinpoints(geometry.encoder.image_size),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    config.text_config.pad_token_id = PAD_ID
    config.architectures = ["LlavaNextForConditionalGeneration"]
    config.save_pretrained(folder)
    make_processor(geometry).save_pretrained(folder)


def make_requests(geometry: ModelGeometry, count: int, seed: int) -> list[dict]:
    """``count`` prompts of random words around one random image of twice the crop size each."""
    random = np.random.RandomState(seed)
    vocab_words = geometry.lm.vocab - 5

    def words(n: int) -> str:
        return " ".join(f"w{i}" for i in random.randint(0, vocab_words, n))

    side = 2 * geometry.encoder.image_size
    return [
        {
            "prompt": f"{words(geometry.system_tokens)} <image> {words(geometry.question_tokens)}",
            "multi_modal_data": {
                "image": Image.fromarray(random.randint(0, 256, (side, side, 3), dtype=np.uint8))
            },
        }
        for _ in range(count)
    ]


async def serve_one(engine, request: dict, params) -> tuple[float, int]:
    """Send one request; return its TTFT (seconds) and prompt length."""
    start = time.perf_counter()
    ttft, prompt_tokens = None, 0
    async for output in engine.generate(request, params, request_id=uuid.uuid4().hex):
        if ttft is None and output.outputs and output.outputs[0].token_ids:
            ttft = time.perf_counter() - start
        prompt_tokens = len(output.prompt_token_ids or [])
    return ttft, prompt_tokens


async def run_level(engine, requests: list[dict], concurrency: int, params) -> dict:
    """``concurrency`` clients working through ``requests``: requests/s, TTFTs, prompt length."""
    queue = list(requests)
    ttfts, prompt_lengths = [], set()

    async def client():
        while queue:
            ttft, prompt_tokens = await serve_one(engine, queue.pop(0), params)
            ttfts.append(ttft)
            prompt_lengths.add(prompt_tokens)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {"requests_per_s": len(requests) / elapsed, "ttfts": ttfts, "prompt_tokens": prompt_lengths}


def engine_options(checkpoint: Path, geometry: ModelGeometry, switch: dict | None, args) -> dict:
    options = dict(
        model=str(checkpoint),
        load_format="dummy",
        dtype="float32" if args.device == "cpu" else "bfloat16",
        max_model_len=4096,
        max_num_seqs=max(args.concurrency),
        limit_mm_per_prompt={"image": 1},
        seed=0,
        enforce_eager=args.device == "cpu",
    )
    # Two engines share the device; on a CPU vLLM reads this as the fraction of host memory.
    options["gpu_memory_utilization"] = args.memory_fraction
    if switch is not None:
        budget = geometry.budgets[0]
        options["hf_overrides"] = {"visionzip": {"dominant": budget.k_dom, "contextual": budget.k_ctx}}
    return options


async def measure(geometry: ModelGeometry, checkpoint: Path, args) -> list[dict]:
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    engines = {
        name: AsyncLLM.from_engine_args(
            AsyncEngineArgs(**engine_options(checkpoint, geometry, switch, args))
        )
        for name, switch in ((FULL, None), (ZIPPED, {}))
    }
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    try:
        for engine in engines.values():  # warm-up: one request each
            await run_level(engine, make_requests(geometry, 1, seed=10_000), 1, params)
        results = {(name, c): [] for name in engines for c in args.concurrency}
        for round_index in range(args.rounds):
            order = list(engines) if round_index % 2 == 0 else list(engines)[::-1]
            for concurrency in args.concurrency:
                count = args.requests or max(concurrency, 4)
                for name in order:
                    requests = make_requests(geometry, count, seed=round_index * 1000 + concurrency)
                    results[name, concurrency].append(
                        await run_level(engines[name], requests, concurrency, params)
                    )
    finally:
        for engine in engines.values():
            engine.shutdown()
        engines.clear()  # shut down here, not again by the engines' finalizers at exit
    return summarise(results, geometry, args)


def summarise(results: dict, geometry: ModelGeometry, args) -> list[dict]:
    import vllm

    device = torch.device(args.device)
    environment = model_run_environment(device, "tiny" if args.tiny else "full", torch.float32)
    environment["dtype"] = "float32" if args.device == "cpu" else "bfloat16"
    rows = []
    for (name, concurrency), levels in results.items():
        rates = [level["requests_per_s"] for level in levels]
        ttfts = [ttft for level in levels for ttft in level["ttfts"]]
        (prompt_tokens,) = set().union(*(level["prompt_tokens"] for level in levels))
        budget = geometry.budgets[0]
        rows.append(
            {
                "model": geometry.name,
                "encoder": geometry.encoder.name,
                "lm": geometry.lm.name,
                "lm_layers": args.lm_layers or geometry.lm.layers,
                "provider": name,
                "budget": f"{budget.k_dom}+{budget.k_ctx} per crop" if name == ZIPPED else "all",
                "prompt_tokens": prompt_tokens,
                "max_tokens": args.max_tokens,
                "concurrency": concurrency,
                "requests_per_round": len(levels[0]["ttfts"]),
                "rounds": len(levels),
                "requests_per_s_median": statistics.median(rates),
                "requests_per_s_p20": percentile(rates, 20),
                "requests_per_s_p80": percentile(rates, 80),
                "ttft_s_median": statistics.median(ttfts),
                "ttft_s_p90": percentile(ttfts, 90),
                "vllm": vllm.__version__,
                **environment,
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    by_key = {(row["provider"], row["concurrency"]): row for row in rows}
    print(f"{rows[0]['model']} ({rows[0]['lm']}, {rows[0]['lm_layers']} LM layers) on {rows[0]['device']}")
    print(f"{'concurrency':>11} {'provider':>10} {'prompt':>7} {'req/s (p20-p80)':>24} {'TTFT med / p90 s':>18} {'req/s x':>8}")
    for (provider, concurrency), row in sorted(by_key.items(), key=lambda item: (item[0][1], item[0][0])):
        full = by_key[FULL, concurrency]
        ratio = row["requests_per_s_median"] / full["requests_per_s_median"]
        rate = f"{row['requests_per_s_median']:.3f} ({row['requests_per_s_p20']:.3f}-{row['requests_per_s_p80']:.3f})"
        ttft = f"{row['ttft_s_median']:.3f} / {row['ttft_s_p90']:.3f}"
        print(f"{concurrency:>11} {provider:>10} {row['prompt_tokens']:>7} {rate:>24} {ttft:>18} {ratio:>8.2f}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="toy geometry on the CPU (CI)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=None, help="default 1 8 32 (tiny: 1 2)")
    parser.add_argument("--requests", type=int, default=0, help="requests per level (default max(c, 4))")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, tiny 1)")
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens generated (default 32, tiny 2)")
    parser.add_argument("--lm-layers", type=int, default=0, help="keep only this many LM layers (0: all)")
    parser.add_argument(
        "--memory-fraction", type=float, default=None,
        help="of the GPU's (CPU: host) memory, per engine (default 0.42 on a GPU, 0.25 on a CPU)",
    )
    add_results_options(parser)
    args = parser.parse_args(argv)
    args.device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    args.memory_fraction = args.memory_fraction or (0.42 if args.device == "cuda" else 0.25)
    args.concurrency = args.concurrency or ([1, 2] if args.tiny else [1, 8, 32])
    args.rounds = args.rounds or (1 if args.tiny else 3)
    args.max_tokens = args.max_tokens or (2 if args.tiny else 32)
    geometry = TINY if args.tiny else LLAVA_NEXT_7B
    if args.lm_layers:
        geometry = dataclasses.replace(geometry, lm=dataclasses.replace(geometry.lm, layers=args.lm_layers))
    with tempfile.TemporaryDirectory() as folder:
        write_checkpoint(geometry, Path(folder))
        rows = asyncio.run(measure(geometry, Path(folder), args))
    suffix = "_tiny" if args.tiny else ""
    save_rows(args.results_dir, f"vllm_{device_slug(torch.device(args.device))}{suffix}.csv", rows)
    print_table(rows)


if __name__ == "__main__":
    main(sys.argv[1:])
