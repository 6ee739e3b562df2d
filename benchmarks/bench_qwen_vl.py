"""Qwen2.5-VL-7B time to first token and peak memory: full tokens vs the published VisionZip vs this package.

Qwen2.5-VL-7B geometry (vision: 32 blocks of width 1280, windows of 112 pixels, full attention in
blocks 7/15/23/31; language model: 28 layers of width 3584), random weights in bfloat16 on the GPU,
images of 1024x1024 pixels (74x74 patches, 1369 tokens each). Scenarios:

- ``1x1024``: one prompt, one image;
- ``4x1024``: one prompt, four images;
- ``4-prompts-mixed``: four prompts, one image each, of 1024x1024, 768x1024, 1024x512, 512x512.

Pipelines, each timed as ``generate(max_new_tokens=1)`` from pixels and token ids (TTFT), with its
peak GPU memory; within a scenario they are timed interleaved (each once per round, 5 rounds), and
a row gives the median of the per-round medians with its spread:

- ``full``: the model as it is, every visual token;
- ``published``: the published port's statistic: a dense softmax over the whole packed sequence
  (every image's patches, ignoring ``cu_seqlens``) in the model's dtype, mean over heads, sum over
  queries, the ``[H, N, N]`` map materialised as the port does; the rest as this package (per-image
  selection keeps the same number of tokens, within rounding, as the port's one top-k across the
  images, and costs the same). The published port runs batch item 0 only, so the ``4-prompts``
  scenario is recorded as ``refused``;
- ``visionzip_kernels``: ``apply_visionzip`` (per image, no attention map).

Budgets: ``0.65 + 0.05`` and ``0.45 + 0.05`` of each image's tokens. The vision encoder uses
FlashAttention-2 where ``flash_attn`` is installed, SDPA otherwise (a row says which).

Without CUDA, or with ``--tiny``, a toy geometry runs in float32 on the CPU in seconds: this
exercises the script (CI); its rows are marked ``mode=tiny`` and are not claims.

With ``--publish`` rows go to ``benchmarks/results/qwen_vl_<device>.csv`` (``_tiny`` in tiny mode); the table is
printed last, with the issue's criteria (1 image: TTFT >= 1.2x at 0.65 + 0.05 and >= 1.4x at
0.45 + 0.05, peak memory no higher than full tokens).

    python benchmarks/bench_qwen_vl.py
    python benchmarks/bench_qwen_vl.py --scenarios 1x1024
    python benchmarks/bench_qwen_vl.py --tiny --results-dir /tmp/qwen_vl
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import sys
import time
from dataclasses import dataclass
from unittest import mock

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from generate.models import twin
from prefill.timing import TINY_POLICY, RepetitionPolicy, Timer, timing_fields
from run_environment import add_results_options, device_slug, model_run_environment, write_and_report
from visionzip_kernels.integrations import apply_visionzip
from visionzip_kernels.integrations import qwen_vl
from visionzip_kernels.integrations.budget import Budget

FULL, PUBLISHED, PACKAGE = "full", "published", "visionzip_kernels"
BUDGETS = ((0.65, 0.05), (0.45, 0.05))
IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END = 151655, 151656, 151652, 151653
PAD = 151643
TEXT_BEFORE, TEXT_AFTER = 20, 40  # prompt tokens around the images (system and question)
TTFT_POLICY = RepetitionPolicy(warmup=2, min_reps=5, max_reps=15, target_ms=2000.0, rounds=5)  # the full-size run in minutes
MIB = 1024 * 1024


@dataclass(frozen=True)
class Geometry:
    """A model's config and its scenarios: name -> prompts, each a list of (height, width) pixels."""

    name: str
    vision: dict
    text: dict
    scenarios: dict[str, list[list[tuple[int, int]]]]
    patch: int = 14
    merge: int = 2

    def config(self) -> Qwen2_5_VLConfig:
        return Qwen2_5_VLConfig(
            vision_config=self.vision,
            text_config=self.text,
            image_token_id=IMAGE_TOKEN,
            video_token_id=VIDEO_TOKEN,
            vision_start_token_id=VISION_START,
            vision_end_token_id=VISION_END,
        )

    def grid(self, height: int, width: int) -> tuple[int, int, int]:
        """``(t, h, w)`` patches of an image after the processor's resize."""
        factor = self.patch * self.merge
        resized_h, resized_w = smart_resize(height, width, factor=factor, min_pixels=factor**2,
                                            max_pixels=factor**2 * 1280)
        return 1, resized_h // self.patch, resized_w // self.patch


QWEN2_5_VL_7B = Geometry(
    name="Qwen2.5-VL-7B",
    vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                patch_size=14, window_size=112, fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2),
    text=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
              num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
              rms_norm_eps=1e-6, pad_token_id=PAD,
              rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}),
    scenarios={
        "1x1024": [[(1024, 1024)]],
        "4x1024": [[(1024, 1024)] * 4],
        "4-prompts-mixed": [[(1024, 1024)], [(768, 1024)], [(1024, 512)], [(512, 512)]],
    },
)
TINY = Geometry(
    name="tiny",
    vision=dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                patch_size=14, window_size=56, fullatt_block_indexes=[2]),
    text=dict(vocab_size=151680, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, pad_token_id=PAD,
              rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 1, 1]}),
    scenarios={
        "1x1024": [[(112, 112)]],
        "4x1024": [[(112, 112)] * 4],
        "4-prompts-mixed": [[(112, 112)], [(84, 112)], [(112, 56)], [(56, 56)]],
    },
)


def dense_packed_importance(q, k, cu_seqlens, scale=None, *, seqlens=None, lse=None, backend="auto"):
    """The published port's statistic, in ``attention_importance_varlen``'s signature: softmax of
    ``q k^T * scale`` over **all** ``N`` packed patches (``cu_seqlens`` ignored) in the inputs' dtype,
    ``[H, N, N]`` materialised, mean over heads, sum over queries -> ``[N]`` float32."""
    queries, keys = q.transpose(0, 1), k.transpose(0, 1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    probabilities = torch.softmax(torch.matmul(queries, keys.transpose(1, 2)) * scale, dim=-1)
    return probabilities.mean(dim=0).sum(dim=0).float()


@dataclass
class Batch:
    """The model inputs of one scenario for one pipeline, and its token counts."""

    inputs: dict
    visual_tokens: int
    lm_tokens: int


def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` ``[B, L]`` of token rows padded on the left with ``PAD``."""
    length = max(len(row) for row in rows)
    input_ids = torch.tensor([[PAD] * (length - len(row)) + row for row in rows])
    attention_mask = torch.tensor([[0] * (length - len(row)) + [1] * len(row) for row in rows])
    return input_ids, attention_mask


def make_batch(geometry: Geometry, prompts, budget: Budget | None, device, dtype, generator) -> Batch:
    """Random pixels and token ids: per prompt, text, then per image ``<vision_start>``, its
    placeholders (all its tokens, or ``budget.tokens_for`` them), ``<vision_end>``, then text;
    left-padded."""
    grids = [geometry.grid(*size) for images in prompts for size in images]
    patch_width = 3 * 2 * geometry.patch**2
    patches = sum(t * h * w for t, h, w in grids)
    pixel_values = torch.randn(patches, patch_width, generator=generator).to(device, dtype)
    rows, visual = [], 0
    grid_iter = iter(grids)
    for images in prompts:
        ids = torch.randint(0, 150000, (TEXT_BEFORE,), generator=generator).tolist()
        for _ in images:
            t, h, w = next(grid_iter)
            tokens = t * h * w // geometry.merge**2
            count = tokens if budget is None else budget.tokens_for(tokens)
            visual += count
            ids += [VISION_START] + [IMAGE_TOKEN] * count + [VISION_END]
        ids += torch.randint(0, 150000, (TEXT_AFTER,), generator=generator).tolist()
        rows.append(ids)
    input_ids, attention_mask = left_padded(rows)
    inputs = {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "mm_token_type_ids": (input_ids == IMAGE_TOKEN).long().to(device),
        "pixel_values": pixel_values,
        "image_grid_thw": torch.tensor(grids).to(device),
    }
    return Batch(inputs, visual, int(attention_mask.sum()))


def ttft_call(model, inputs: dict):
    """One ``generate`` to the first token (greedy)."""
    return lambda: model.generate(**inputs, max_new_tokens=1, do_sample=False, pad_token_id=PAD)


def memory_fields(timer: Timer, fn) -> dict:
    """Peak memory of one call of ``fn`` as row fields; ``status=oom`` if it runs out of memory."""
    try:
        memory = timer.memory(fn)
    except torch.cuda.OutOfMemoryError:
        gc.collect()
        torch.cuda.empty_cache()
        return {"status": "oom"}
    if memory is None:
        return {"status": "ok"}
    return {"status": "ok", "peak_mib": round(memory.peak_mib, 1), "resident_mib": round(memory.resident_mib, 1)}


def published_call(model, inputs: dict):
    """TTFT of ``model`` (VisionZip applied) with the published port's dense statistic in place of
    ``attention_importance_varlen``, patched for the call alone so other pipelines keep theirs."""
    call = ttft_call(model, inputs)

    def run():
        with mock.patch.object(qwen_vl, "attention_importance_varlen", dense_packed_importance):
            return call()

    return run


def scenario_rows(model, geometry: Geometry, scenario: str, timer: Timer, device, dtype) -> list[dict]:
    """Rows of the full pipeline and of both VisionZip pipelines at every budget.

    Each VisionZip pipeline runs on its own twin of ``model`` (``generate.models.twin``: the same
    weights, its own instance patches), so every pipeline exists at once and they are timed
    interleaved (``Timer.interleave``): round after round, each once per round. Peak memory is
    taken first, one pipeline at a time.
    """
    prompts = geometry.scenarios[scenario]
    described = {"scenario": scenario, "prompts": len(prompts), "images": sum(len(p) for p in prompts),
                 "image_sizes": " ".join(f"{h}x{w}" for images in prompts for h, w in images)}
    batch = make_batch(geometry, prompts, None, device, dtype, torch.Generator().manual_seed(0))
    pipelines = [({**described, "pipeline": FULL, "budget": "all", "visual_tokens": batch.visual_tokens,
                   "lm_tokens": batch.lm_tokens}, ttft_call(model, batch.inputs))]
    handles = []
    try:
        for dominant, contextual in BUDGETS:
            budget = Budget(dominant, contextual)
            batch = make_batch(geometry, prompts, budget, device, dtype, torch.Generator().manual_seed(0))
            counts = {"budget": f"{dominant}+{contextual}", "visual_tokens": batch.visual_tokens,
                      "lm_tokens": batch.lm_tokens}
            for pipeline in (PUBLISHED, PACKAGE):
                row = {**described, "pipeline": pipeline, **counts}
                if pipeline == PUBLISHED and len(prompts) > 1:
                    pipelines.append(({**row, "status": "refused: the published port runs batch item 0 only"}, None))
                    continue
                model_twin = twin(model)
                handles.append(apply_visionzip(model_twin, dominant=dominant, contextual=contextual))
                make_call = published_call if pipeline == PUBLISHED else ttft_call
                pipelines.append((row, make_call(model_twin, batch.inputs)))
        return measured_rows(pipelines, timer)
    finally:
        for handle in handles:
            handle.remove()


def measured_rows(pipelines: list[tuple[dict, object]], timer: Timer) -> list[dict]:
    """Each ``(row, call)`` pipeline's row with its peak memory (one pipeline at a time), then its
    timing, all calls timed interleaved (``Timer.interleave``), and its speedup over the first
    (full tokens) row; a ``None`` call is a row left as it is (its ``status`` says why)."""
    rows = [{**row, **memory_fields(timer, call)} if call else row for row, call in pipelines]
    timed = [(row, call) for row, (_, call) in zip(rows, pipelines) if row["status"] == "ok"]
    for (row, _), timing in zip(timed, timer.interleave([call for _, call in timed])):
        row.update(timing_fields(timing))
    full = rows[0].get("median_ms")
    for row in rows:
        if full and row.get("median_ms"):
            row["speedup_vs_full"] = round(full / row["median_ms"], 3)
    return rows


def criteria(rows: list[dict]) -> list[str]:
    """The issue's GPU criteria on the one-image scenario, as pass/fail lines."""
    one = {(row["pipeline"], row["budget"]): row for row in rows if row["scenario"] == "1x1024"}
    full = one.get((FULL, "all"), {})
    lines = []
    for budget, wanted in (("0.65+0.05", 1.2), ("0.45+0.05", 1.4)):
        row = one.get((PACKAGE, budget), {})
        speedup = row.get("speedup_vs_full")
        verdict = "n/a" if speedup is None else ("pass" if speedup >= wanted else "FAIL")
        lines.append(f"1 image, {budget}: TTFT speedup {speedup} (wanted >= {wanted}): {verdict}")
        if "peak_mib" in row and "peak_mib" in full:
            verdict = "pass" if row["peak_mib"] <= full["peak_mib"] else "FAIL"
            peaks = f"peak {row['peak_mib']} MiB vs full {full['peak_mib']} MiB"
            lines.append(f"1 image, {budget}: {peaks}: {verdict}")
    return lines


def table(rows: list[dict]) -> str:
    columns = ("scenario", "pipeline", "budget", "visual tokens", "TTFT median ms", "speedup vs full",
               "peak MiB", "status")
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        lines.append(
            f"| {row['scenario']} | {row['pipeline']} | {row['budget']} | {row['visual_tokens']} | "
            f"{row.get('median_ms', '')} | {row.get('speedup_vs_full', '')} | {row.get('peak_mib', '')} | "
            f"{row['status']} |"
        )
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true",
                        help="toy geometry in float32 on the CPU (automatic without CUDA)")
    add_results_options(parser)
    parser.add_argument("--scenarios", help=f"comma-separated, of {sorted(TINY.scenarios)} (default: all)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tiny = args.tiny or not torch.cuda.is_available()
    device = torch.device("cpu") if tiny else torch.device("cuda")
    dtype = torch.float32 if tiny else torch.bfloat16
    geometry = TINY if tiny else QWEN2_5_VL_7B
    scenarios = args.scenarios.split(",") if args.scenarios else list(geometry.scenarios)
    unknown = set(scenarios) - set(geometry.scenarios)
    if unknown:
        raise SystemExit(f"unknown --scenarios {sorted(unknown)}; known: {sorted(geometry.scenarios)}")
    if tiny:
        torch.set_num_threads(1)  # a smoke test: one thread is fastest on a small, shared CI machine
    attention = "flash_attention_2" if not tiny and importlib.util.find_spec("flash_attn") else "sdpa"
    env = {**model_run_environment(device, "tiny" if tiny else "full-size", dtype), "attention": attention,
           "model": geometry.name}
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            geometry.config(), dtype=dtype, attn_implementation=attention
        ).eval()
    timer = Timer(device, TINY_POLICY if tiny else TTFT_POLICY)
    rows = []
    started = time.perf_counter()
    with torch.inference_mode():
        for scenario in scenarios:
            elapsed = time.perf_counter() - started
            print(f"[{elapsed:6.1f} s] {geometry.name} {scenario}", file=sys.stderr, flush=True)
            rows += [{**env, **row} for row in scenario_rows(model, geometry, scenario, timer, device, dtype)]
    write_and_report(args.results_dir, f"qwen_vl_{device_slug(device)}{'_tiny' if tiny else ''}.csv",
                     rows, table(rows), None if tiny else criteria(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
