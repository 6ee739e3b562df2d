"""Gemma 3 and Gemma 4 time to first token and peak memory: every soft token vs VisionZip's.

Geometries (random weights in bfloat16 on the GPU, SDPA everywhere):

- ``Gemma-3-12B``: SigLIP-So400m at 896 pixels (27 layers of width 1152, 4096 patches pooled to
  256 soft tokens per image) and the 12B language model (48 layers of width 3840, 16 query and 8
  key/value heads of 256, sliding window 1024);
- ``Gemma-4-E4B``: the E2B/E4B vision encoder (16 layers of width 768, 16-pixel patches pooled
  3 x 3) and the E4B language model (42 layers of width 2560, 8 query and 2 key/value heads of 256
  (512 in full-attention layers), five sliding-window layers of 512 to one full, per-layer
  embeddings of 256, the last 18 layers sharing key/value caches).

Scenarios, one prompt each (20 text tokens, the images, 40 text tokens): Gemma 3 ``1-image`` and
``4-images`` (256 soft tokens each); Gemma 4 ``1x280`` and ``4x280`` (images of 14 x 20 soft tokens,
the processor's default ``max_soft_tokens`` = 280) and ``1x1120`` (28 x 40, the largest setting).

Pipelines, each timed as ``generate(max_new_tokens=1)`` from pixels and token ids (TTFT), with its
peak GPU memory, timed interleaved (each once per round, 5 rounds); a row gives the median of the
per-round medians with its spread: ``full`` (the model as it is) and ``visionzip_kernels``
(``apply_visionzip`` on a twin of the model sharing its weights) at each family's default budget
and a tighter one: Gemma 3 ``108 + 20`` and ``54 + 10`` soft tokens per image, Gemma 4 ``0.42 +
0.08`` and ``0.2 + 0.05`` of each image's soft tokens.

Without CUDA, or with ``--tiny``, the tiny test models (``visionzip_kernels.testing.gemma``) run in
float32 on the CPU in seconds: this exercises the script (CI); its rows are marked ``mode=tiny``
and are not claims.

Rows go to ``benchmarks/results/gemma_<device>.csv`` (``_tiny`` in tiny mode); the table is
printed last, with the issue's criterion: peak memory no higher than full tokens.

    python benchmarks/bench_gemma.py
    python benchmarks/bench_gemma.py --models Gemma-4-E4B --scenarios 1x280
    python benchmarks/bench_gemma.py --tiny --results-dir /tmp/gemma
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    Gemma4Config,
    Gemma4ForConditionalGeneration,
    Gemma4TextConfig,
    Gemma4VisionConfig,
    SiglipVisionConfig,
)

from bench_qwen_vl import TTFT_POLICY, memory_fields
from generate.models import twin
from prefill.timing import TINY_POLICY, Timer, timing_fields
from run_environment import add_results_options, device_slug, model_run_environment, write_and_report
from visionzip_kernels.integrations import apply_visionzip
from visionzip_kernels.integrations.budget import Budget
from visionzip_kernels.testing import gemma as tiny

FULL, PACKAGE = "full", "visionzip_kernels"
TEXT_BEFORE, TEXT_AFTER = 20, 40  # prompt tokens around the images


@dataclass(frozen=True)
class Geometry:
    """A Gemma model to time: how to build it, its scenarios and budgets.

    scenarios: name -> images of the one prompt, each a ``(rows, cols)`` grid of soft tokens.
    soft_token: the placeholder id; boi, eoi: begin- and end-of-image ids; patch: the patch side
    (Gemma 4: pixels per patch side; Gemma 3: image side in pixels); text_ids: the ``[low, high)``
    ids the prompt's random text is drawn from.
    """

    name: str
    family: str
    build: Callable[[], torch.nn.Module]
    scenarios: dict[str, list[tuple[int, int]]]
    budgets: tuple[tuple, ...]
    soft_token: int
    boi: int
    eoi: int
    patch: int
    text_ids: tuple[int, int] = (10, 1000)


def gemma3_12b() -> Gemma3Config:
    vision = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                num_attention_heads=16, image_size=896, patch_size=14, vision_use_head=False)
    text = Gemma3TextConfig(vocab_size=262208, hidden_size=3840, intermediate_size=15360, num_hidden_layers=48,
                            num_attention_heads=16, num_key_value_heads=8, head_dim=256,
                            query_pre_attn_scalar=256, sliding_window=1024)
    return Gemma3Config(vision_config=vision, text_config=text, mm_tokens_per_image=256)


def gemma4_e4b() -> Gemma4Config:
    text = Gemma4TextConfig(vocab_size=262144, hidden_size=2560, intermediate_size=10240, num_hidden_layers=42,
                            num_attention_heads=8, num_key_value_heads=2, head_dim=256, global_head_dim=512,
                            sliding_window=512, layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 7,
                            hidden_size_per_layer_input=256, vocab_size_per_layer_input=262144,
                            num_kv_shared_layers=18)
    return Gemma4Config(text_config=text, vision_config=Gemma4VisionConfig(), audio_config=None)


def full_size(model_class, config: Callable) -> Callable[[], torch.nn.Module]:
    def build():
        with torch.device("cuda"):
            return model_class._from_config(config(), dtype=torch.bfloat16, attn_implementation="sdpa").eval()

    return build


GEMMA3_IDS = dict(soft_token=262144, boi=255999, eoi=256000)
GEMMA4_IDS = dict(soft_token=258880, boi=255999, eoi=258882)
GEOMETRIES = {
    "Gemma-3-12B": Geometry("Gemma-3-12B", "gemma3", full_size(Gemma3ForConditionalGeneration, gemma3_12b),
                            {"1-image": [(16, 16)], "4-images": [(16, 16)] * 4}, ((108, 20), (54, 10)),
                            **GEMMA3_IDS, patch=896),
    "Gemma-4-E4B": Geometry("Gemma-4-E4B", "gemma4", full_size(Gemma4ForConditionalGeneration, gemma4_e4b),
                            {"1x280": [(14, 20)], "4x280": [(14, 20)] * 4, "1x1120": [(28, 40)]},
                            ((0.42, 0.08), (0.2, 0.05)), **GEMMA4_IDS, patch=16),
}
TINY_GEOMETRIES = {
    "Gemma-3-12B": Geometry("tiny Gemma 3", "gemma3", tiny.gemma3_model,
                            {"1-image": [(4, 4)], "4-images": [(4, 4)] * 4}, ((5, 3), (3, 1)),
                            soft_token=tiny.SOFT_ID, boi=tiny.BOI_ID, eoi=tiny.EOI_ID, patch=tiny.GEMMA3_IMAGE_SIZE,
                            text_ids=(tiny.SOFT_ID + 1, len(tiny.GEMMA3_WORDS))),
    "Gemma-4-E4B": Geometry("tiny Gemma 4", "gemma4", tiny.gemma4_model,
                            {"1x280": [(7, 10)], "4x280": [(7, 10)] * 4, "1x1120": [(5, 14)]},
                            ((0.42, 0.08), (0.2, 0.05)), soft_token=tiny.GEMMA4_IMAGE_ID,
                            boi=tiny.GEMMA4_WORDS.index("<|image>"), eoi=tiny.GEMMA4_WORDS.index("<image|>"),
                            patch=tiny.GEMMA4_PATCH, text_ids=(tiny.GEMMA4_IMAGE_ID + 5, len(tiny.GEMMA4_WORDS))),
}


def pixel_inputs(geometry: Geometry, images, device, dtype, generator) -> dict:
    """Random pixels of ``images`` (soft-token grids): Gemma 3 ``[n, 3, S, S]``; Gemma 4 patches
    ``[n, P, 3 p**2]`` with their ``(x, y)`` positions, padded to the longest at ``-1``."""
    if geometry.family == "gemma3":
        side = geometry.patch
        return {"pixel_values": torch.randn(len(images), 3, side, side, generator=generator).to(device, dtype)}
    grids = [(3 * rows, 3 * cols) for rows, cols in images]
    longest = max(h * w for h, w in grids)
    positions = torch.full((len(images), longest, 2), -1, dtype=torch.long)
    for image, (height, width) in enumerate(grids):
        ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        positions[image, : height * width] = torch.stack([xs, ys], dim=-1).reshape(-1, 2)
    pixels = torch.rand(len(images), longest, 3 * geometry.patch**2, generator=generator)
    return {"pixel_values": pixels.to(device, dtype), "image_position_ids": positions.to(device)}


def make_inputs(geometry: Geometry, images, budget: Budget | None, device, dtype) -> tuple[dict, int]:
    """The model inputs of one prompt (text, each image's placeholders, text) and its visual token
    count: every soft token, or what ``budget`` keeps of each image."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(*geometry.text_ids, (TEXT_BEFORE,), generator=generator).tolist()
    visual = 0
    for rows, cols in images:
        count = rows * cols if budget is None else budget.tokens_for(rows * cols)
        visual += count
        ids += [geometry.boi] + [geometry.soft_token] * count + [geometry.eoi]
    ids += torch.randint(*geometry.text_ids, (TEXT_AFTER,), generator=generator).tolist()
    input_ids = torch.tensor([ids], device=device)
    type_ids = "token_type_ids" if geometry.family == "gemma3" else "mm_token_type_ids"
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
              type_ids: (input_ids == geometry.soft_token).long(),
              **pixel_inputs(geometry, images, device, dtype, generator)}
    return inputs, visual


def ttft_call(model, inputs: dict):
    """One ``generate`` to the first token (greedy)."""
    return lambda: model.generate(**inputs, max_new_tokens=1, do_sample=False, pad_token_id=0)


def scenario_rows(model, geometry: Geometry, scenario: str, timer: Timer, device, dtype) -> list[dict]:
    """Rows of the full pipeline and of VisionZip at each budget, timed interleaved (each
    VisionZip pipeline on its own twin of ``model``); peak memory first, one pipeline at a time."""
    images = geometry.scenarios[scenario]
    described = {"model": geometry.name, "scenario": scenario, "images": len(images),
                 "soft_tokens_per_image": " ".join(str(rows * cols) for rows, cols in images)}
    inputs, visual = make_inputs(geometry, images, None, device, dtype)
    pipelines = [({**described, "pipeline": FULL, "budget": "all", "visual_tokens": visual}, ttft_call(model, inputs))]
    handles = []
    try:
        for dominant, contextual in geometry.budgets:
            inputs, visual = make_inputs(geometry, images, Budget(dominant, contextual), device, dtype)
            model_twin = twin(model)
            handles.append(apply_visionzip(model_twin, dominant=dominant, contextual=contextual))
            row = {**described, "pipeline": PACKAGE, "budget": f"{dominant}+{contextual}", "visual_tokens": visual}
            pipelines.append((row, ttft_call(model_twin, inputs)))
        rows = [{**row, **memory_fields(timer, call)} for row, call in pipelines]
        timed = [(row, call) for row, (_, call) in zip(rows, pipelines) if row["status"] == "ok"]
        for (row, _), timing in zip(timed, timer.interleave([call for _, call in timed])):
            row.update(timing_fields(timing))
    finally:
        for handle in handles:
            handle.remove()
    full = rows[0].get("median_ms")
    for row in rows:
        if full and row.get("median_ms"):
            row["speedup_vs_full"] = round(full / row["median_ms"], 3)
    return rows


def criteria(rows: list[dict]) -> list[str]:
    """Peak memory of every VisionZip row against full tokens in its scenario, as pass/fail lines."""
    full = {(row["model"], row["scenario"]): row for row in rows if row["pipeline"] == FULL}
    lines = []
    for row in rows:
        reference = full.get((row["model"], row["scenario"]), {})
        if row["pipeline"] == PACKAGE and "peak_mib" in row and "peak_mib" in reference:
            verdict = "pass" if row["peak_mib"] <= reference["peak_mib"] else "FAIL"
            lines.append(f"{row['model']} {row['scenario']} {row['budget']}: peak {row['peak_mib']} MiB "
                         f"vs full {reference['peak_mib']} MiB: {verdict}")
    return lines


def table(rows: list[dict]) -> str:
    columns = ("model", "scenario", "pipeline", "budget", "visual tokens", "TTFT median ms", "p20-p80 ms",
               "speedup vs full", "peak MiB", "status")
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        spread = f"{row['p20_ms']}-{row['p80_ms']}" if "p20_ms" in row else ""
        lines.append(
            f"| {row['model']} | {row['scenario']} | {row['pipeline']} | {row['budget']} | {row['visual_tokens']} | "
            f"{row.get('median_ms', '')} | {spread} | {row.get('speedup_vs_full', '')} | "
            f"{row.get('peak_mib', '')} | {row['status']} |"
        )
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny test models in float32 on the CPU (automatic without CUDA)")
    add_results_options(parser)
    parser.add_argument("--models", help=f"comma-separated, of {sorted(GEOMETRIES)} (default: all)")
    parser.add_argument("--scenarios", help="comma-separated; each model runs those it has (default: all)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tiny_mode = args.tiny or not torch.cuda.is_available()
    device = torch.device("cpu") if tiny_mode else torch.device("cuda")
    dtype = torch.float32 if tiny_mode else torch.bfloat16
    geometries = TINY_GEOMETRIES if tiny_mode else GEOMETRIES
    names = args.models.split(",") if args.models else list(geometries)
    unknown = set(names) - set(geometries)
    if unknown:
        raise SystemExit(f"unknown --models {sorted(unknown)}; known: {sorted(geometries)}")
    if tiny_mode:
        torch.set_num_threads(1)  # a smoke test: one thread is fastest on a small, shared CI machine
    env = {**model_run_environment(device, "tiny" if tiny_mode else "full-size", dtype), "attention": "sdpa"}
    timer = Timer(device, TINY_POLICY if tiny_mode else TTFT_POLICY)
    wanted = args.scenarios.split(",") if args.scenarios else None
    known = {scenario for name in names for scenario in geometries[name].scenarios}
    if wanted and set(wanted) - known:
        raise SystemExit(f"unknown --scenarios {sorted(set(wanted) - known)}; known: {sorted(known)}")
    rows = []
    started = time.perf_counter()
    for name in names:
        geometry = geometries[name]
        model = geometry.build()
        with torch.inference_mode():
            for scenario in [s for s in geometry.scenarios if wanted is None or s in wanted]:
                elapsed = time.perf_counter() - started
                print(f"[{elapsed:6.1f} s] {geometry.name} {scenario}", file=sys.stderr, flush=True)
                rows += [{**env, **row} for row in scenario_rows(model, geometry, scenario, timer, device, dtype)]
        del model
    write_and_report(args.results_dir, f"gemma_{device_slug(device)}{'_tiny' if tiny_mode else ''}.csv",
                     rows, table(rows), None if tiny_mode else criteria(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
