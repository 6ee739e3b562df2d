"""Qwen3.5-9B and InternVL3-8B time to first token and peak memory: full tokens vs VisionZip.

Random weights in bfloat16 on the GPU, built from each model's geometry:

- ``Qwen3.5-9B``: vision 27 blocks of width 1152 (16 heads, 16-pixel patches, 2x2 merge units);
  language model 32 layers of width 4096 (every 4th full attention, 16 query / 4 key-value heads of
  256; the others gated delta rule, 16 / 32 heads of 128), vocabulary 248,320. Images of
  1024 x 1024 pixels: 64 x 64 patches, 1024 tokens each. Its rows come from
  ``bench_qwen_vl.scenario_rows``: ``full``, the ``published`` statistic (a dense softmax over the
  packed sequence) and ``visionzip_kernels``, timed interleaved.
- ``InternVL3-8B``: InternViT-300M (24 layers of width 1024, 16 heads, 448-pixel tiles of 14-pixel
  patches, 256 tokens per tile after the pixel shuffle); language model Qwen2.5-7B (28 layers of
  width 3584, 28 / 4 heads), vocabulary 151,674. Tiles as the GOT-OCR2 image processor cuts them
  (up to 12 and a thumbnail): a 896 x 1344 image is 2 x 3 tiles and the thumbnail, 7 tiles.
  Pipelines ``full`` and ``visionzip_kernels``, timed interleaved.

Each pipeline is timed as ``generate(max_new_tokens=1)`` from pixels and token ids (TTFT), its
peak GPU memory taken first, one pipeline at a time; a row gives the median of the per-round
medians with p20 / p80. Budgets: ``0.65 + 0.05`` (the default of both families: of each image's
tokens for Qwen3.5, of each tile's for InternVL) and ``0.45 + 0.05``. The vision encoder uses
FlashAttention-2 where ``flash_attn`` is installed, SDPA otherwise (a row says which).

Without CUDA, or with ``--tiny``, toy geometries run in float32 on the CPU in seconds: this
exercises the script (CI); its rows are marked ``mode=tiny`` and are not claims.

Rows go to ``benchmarks/results/qwen3_5_internvl_<device>.csv`` (``_tiny`` in tiny mode); the
table is printed last, with the issue's criteria (TTFT at the default budget vs full tokens, peak
memory no higher than full tokens).

    python benchmarks/bench_qwen3_5_internvl.py
    python benchmarks/bench_qwen3_5_internvl.py --models InternVL3-8B
    python benchmarks/bench_qwen3_5_internvl.py --tiny --results-dir /tmp/families
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from dataclasses import dataclass

import torch
from transformers import (
    InternVLConfig,
    InternVLForConditionalGeneration,
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
)
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

import bench_qwen_vl
from bench_qwen_vl import BUDGETS, FULL, PACKAGE, PAD, TTFT_POLICY, left_padded, measured_rows, ttft_call
from generate.models import twin
from prefill.timing import TINY_POLICY, Timer
from run_environment import add_results_options, device_slug, model_run_environment, write_and_report
from visionzip_kernels.integrations import apply_visionzip
from visionzip_kernels.integrations.internvl import tile_tokens

QWEN3_5, INTERNVL = "Qwen3.5-9B", "InternVL3-8B"
MODELS = (QWEN3_5, INTERNVL)
IMG_START, IMG_END, IMG_CONTEXT = 151665, 151666, 151667  # InternVL3's <img>, </img>, <IMG_CONTEXT>
DEFAULT_BUDGET = "0.65+0.05"


@dataclass(frozen=True)
class Qwen3_5Geometry(bench_qwen_vl.Geometry):
    """``bench_qwen_vl.Geometry`` of a Qwen3.5 model (the same placeholders and grids)."""

    patch: int = 16

    def config(self) -> Qwen3_5Config:
        return Qwen3_5Config(
            vision_config=self.vision,
            text_config=self.text,
            image_token_id=bench_qwen_vl.IMAGE_TOKEN,
            video_token_id=bench_qwen_vl.VIDEO_TOKEN,
            vision_start_token_id=bench_qwen_vl.VISION_START,
            vision_end_token_id=bench_qwen_vl.VISION_END,
        )


QWEN3_5_ROPE = {"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25,
                "mrope_section": [11, 11, 10], "mrope_interleaved": True}
QWEN3_5_9B = Qwen3_5Geometry(
    name=QWEN3_5,
    vision=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                patch_size=16, num_position_embeddings=2304),
    text=dict(vocab_size=248320, hidden_size=4096, intermediate_size=12288, num_hidden_layers=32,
              num_attention_heads=16, num_key_value_heads=4, head_dim=256, linear_key_head_dim=128,
              linear_value_head_dim=128, linear_num_key_heads=16, linear_num_value_heads=32,
              max_position_embeddings=262144, pad_token_id=PAD, rope_parameters=QWEN3_5_ROPE),
    scenarios={"1x1024": [[(1024, 1024)]], "4x1024": [[(1024, 1024)] * 4]},
)
QWEN3_5_TINY = Qwen3_5Geometry(
    name="tiny-qwen3.5",
    vision=dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                patch_size=16, num_position_embeddings=16),
    text=dict(vocab_size=151680, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=8, linear_key_head_dim=8,
              linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4,
              layer_types=["linear_attention", "full_attention"], max_position_embeddings=4096,
              pad_token_id=PAD, rope_parameters={**QWEN3_5_ROPE, "mrope_section": [2, 1, 1]}),
    scenarios={"1x1024": [[(128, 128)]], "4x1024": [[(128, 128)] * 4]},
)


@dataclass(frozen=True)
class InternVLGeometry:
    """An InternVL config and its scenarios: name -> prompts, each a list of (height, width) pixels."""

    name: str
    vision: dict
    text: dict
    scenarios: dict[str, list[list[tuple[int, int]]]]

    def config(self) -> InternVLConfig:
        tile = self.vision["image_size"] // self.vision["patch_size"] // 2
        return InternVLConfig(vision_config=self.vision, text_config=self.text,
                              image_token_id=IMG_CONTEXT, image_seq_length=tile * tile)

    def tiles(self, height: int, width: int) -> int:
        """Tiles the GOT-OCR2 image processor cuts an image into (up to 12, and a thumbnail)."""
        size = self.vision["image_size"]
        processor = GotOcr2ImageProcessorPil(size={"height": size, "width": size}, crop_to_patches=True,
                                             min_patches=1, max_patches=12)
        return processor.get_number_of_image_patches(height, width, {})


INTERNVL3_8B = InternVLGeometry(
    name=INTERNVL,
    vision=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                attention_bias=True, image_size=448, patch_size=14),
    text=dict(model_type="qwen2", vocab_size=151674, hidden_size=3584, intermediate_size=18944,
              num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
              max_position_embeddings=32768, rms_norm_eps=1e-6, pad_token_id=PAD,
              rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
    scenarios={"1x896x1344": [[(896, 1344)]], "4x448": [[(448, 448)] * 4]},
)
INTERNVL_TINY = InternVLGeometry(
    name="tiny-internvl",
    vision=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                attention_bias=True, image_size=64, patch_size=8),
    text=dict(model_type="qwen2", vocab_size=151680, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, pad_token_id=PAD),
    scenarios={"1x896x1344": [[(128, 192)]], "4x448": [[(64, 64)] * 4]},
)


def internvl_batch(geometry: InternVLGeometry, prompts, tokens_per_tile: int, device, dtype, generator):
    """Random tiles and token ids: per prompt, text, then per image ``<img>``, ``tokens_per_tile``
    placeholders per tile, ``</img>``, then text; left-padded. A ``bench_qwen_vl.Batch``."""
    tiles = [geometry.tiles(*size) for images in prompts for size in images]
    size = geometry.vision["image_size"]
    pixel_values = torch.randn(sum(tiles), 3, size, size, generator=generator).to(device, dtype)
    rows, tile_iter = [], iter(tiles)
    for images in prompts:
        ids = torch.randint(0, 150000, (bench_qwen_vl.TEXT_BEFORE,), generator=generator).tolist()
        for _ in images:
            ids += [IMG_START] + [IMG_CONTEXT] * (tokens_per_tile * next(tile_iter)) + [IMG_END]
        ids += torch.randint(0, 150000, (bench_qwen_vl.TEXT_AFTER,), generator=generator).tolist()
        rows.append(ids)
    input_ids, attention_mask = left_padded(rows)
    inputs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device),
              "pixel_values": pixel_values}
    return bench_qwen_vl.Batch(inputs, tokens_per_tile * sum(tiles), int(attention_mask.sum()))


def internvl_rows(model, geometry: InternVLGeometry, scenario: str, timer: Timer, device, dtype) -> list[dict]:
    """Rows of the full pipeline and of ``apply_visionzip`` at every budget, each VisionZip pipeline
    on its own twin of ``model``; peak memory first, then all timed interleaved."""
    prompts = geometry.scenarios[scenario]
    tiles = [geometry.tiles(*size) for images in prompts for size in images]
    described = {"scenario": scenario, "prompts": len(prompts), "images": len(tiles), "tiles": sum(tiles),
                 "image_sizes": " ".join(f"{h}x{w}" for images in prompts for h, w in images)}
    full_tokens = tile_tokens(model.config)
    batch = internvl_batch(geometry, prompts, full_tokens, device, dtype, torch.Generator().manual_seed(0))
    pipelines = [({**described, "pipeline": FULL, "budget": "all", "visual_tokens": batch.visual_tokens,
                   "lm_tokens": batch.lm_tokens}, ttft_call(model, batch.inputs))]
    handles = []
    try:
        for dominant, contextual in BUDGETS:
            model_twin = twin(model)
            handles.append(apply_visionzip(model_twin, dominant=dominant, contextual=contextual))
            batch = internvl_batch(geometry, prompts, handles[-1].budget.tokens, device, dtype,
                                   torch.Generator().manual_seed(0))
            row = {**described, "pipeline": PACKAGE, "budget": f"{dominant}+{contextual}",
                   "visual_tokens": batch.visual_tokens, "lm_tokens": batch.lm_tokens}
            pipelines.append((row, ttft_call(model_twin, batch.inputs)))
        return measured_rows(pipelines, timer)
    finally:
        for handle in handles:
            handle.remove()


def criteria(rows: list[dict]) -> list[str]:
    """Per model and scenario: TTFT speedup at the default budget, and its peak memory vs full."""
    lines = []
    for model, scenario in dict.fromkeys((row["model"], row["scenario"]) for row in rows):
        chosen = {(row["pipeline"], row["budget"]): row for row in rows
                  if (row["model"], row["scenario"]) == (model, scenario)}
        full, zipped = chosen.get((FULL, "all"), {}), chosen.get((PACKAGE, DEFAULT_BUDGET), {})
        lines.append(f"{model} {scenario}, {DEFAULT_BUDGET}: TTFT speedup {zipped.get('speedup_vs_full')}")
        if "peak_mib" in zipped and "peak_mib" in full:
            verdict = "pass" if zipped["peak_mib"] <= full["peak_mib"] else "FAIL"
            lines.append(f"{model} {scenario}, {DEFAULT_BUDGET}: peak {zipped['peak_mib']} MiB vs full "
                         f"{full['peak_mib']} MiB: {verdict}")
    return lines


def table(rows: list[dict]) -> str:
    columns = ("model", "scenario", "pipeline", "budget", "visual tokens", "TTFT median ms", "p20", "p80",
               "speedup vs full", "peak MiB", "status")
    keys = ("model", "scenario", "pipeline", "budget", "visual_tokens", "median_ms", "p20_ms", "p80_ms",
            "speedup_vs_full", "peak_mib", "status")
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(key, "")) for key in keys) + " |" for row in rows]
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true",
                        help="toy geometries in float32 on the CPU (automatic without CUDA)")
    add_results_options(parser)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {MODELS}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    models = args.models.split(",")
    unknown = set(models) - set(MODELS)
    if unknown:
        raise SystemExit(f"unknown --models {sorted(unknown)}; known: {list(MODELS)}")
    tiny = args.tiny or not torch.cuda.is_available()
    device = torch.device("cpu") if tiny else torch.device("cuda")
    dtype = torch.float32 if tiny else torch.bfloat16
    if tiny:
        torch.set_num_threads(1)  # a smoke test: one thread is fastest on a small, shared CI machine
    attention = "flash_attention_2" if not tiny and importlib.util.find_spec("flash_attn") else "sdpa"
    env = {**model_run_environment(device, "tiny" if tiny else "full-size", dtype), "attention": attention}
    timer = Timer(device, TINY_POLICY if tiny else TTFT_POLICY)
    plans = {
        QWEN3_5: (QWEN3_5_TINY if tiny else QWEN3_5_9B, Qwen3_5ForConditionalGeneration, bench_qwen_vl.scenario_rows),
        INTERNVL: (INTERNVL_TINY if tiny else INTERNVL3_8B, InternVLForConditionalGeneration, internvl_rows),
    }
    rows = []
    started = time.perf_counter()
    for name in models:
        geometry, model_class, scenario_rows = plans[name]
        torch.manual_seed(0)
        with torch.device(device):
            model = model_class._from_config(geometry.config(), dtype=dtype, attn_implementation=attention).eval()
        with torch.inference_mode():
            for scenario in geometry.scenarios:
                print(f"[{time.perf_counter() - started:6.1f} s] {name} {scenario}", file=sys.stderr, flush=True)
                rows += [{**env, "model": name, **row}
                         for row in scenario_rows(model, geometry, scenario, timer, device, dtype)]
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    write_and_report(args.results_dir, f"qwen3_5_internvl_{device_slug(device)}{'_tiny' if tiny else ''}.csv",
                     rows, table(rows), None if tiny else criteria(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
