"""Time to first token and peak memory of LLaVA-OneVision-7B: full tokens vs VisionZip, image and video.

The model is built from its geometry with random weights in bfloat16 on the GPU (timing does not
depend on weight values): SigLIP-SO400M/384 without its last layer (26 layers, width 1152, 16
heads, 27 x 27 = 729 tokens per crop or frame, read at its last layer) and Qwen2-7B (28 layers,
width 3584, 28 heads, 4 key-value heads, MLP 18944, vocabulary 152064), SDPA attention. Cases:

- ``image``: one 1152 x 1536 image, ``anyres_max_9``: base + 3 x 4 crops. Full: 7,309 visual
  tokens; VisionZip 62 + 11 = 73 per crop (10% of 729): 952.
- ``video``: 32 frames of 384 x 384. Full: 32 x 196 + 1 = 6,273 visual tokens (after the model's
  2 x 2 pooling); VisionZip 17 + 3 = 20 per frame (10% of the 196 the language model sees per
  frame): 641.

Time to first token (TTFT) is one ``model(..., logits_to_keep=1)`` call on prepared inputs, what
``generate`` runs before its first token: the vision tower on every crop or frame, the projector,
the language model's prefill with its KV cache, the last position's logits. Providers: ``full``
(the stock model), ``visionzip_kernels`` (``apply_visionzip`` on the same model instance), and
``encoder`` (this package's tower pass alone, to the feature layer, on every crop or frame: what no
token reduction after the tower removes, so ``full / encoder`` bounds the speed-up). Each round
times every provider back to back with ``visionzip_kernels.testing.timing.time_calls`` (CUDA
events), in an order that rotates from round to round; a row's ``median_ms`` is the median of the
per-round medians, with their 20th/80th percentiles and their range. Peak memory is
``torch.cuda.max_memory_allocated`` over one call, and above what was allocated before it.

Without CUDA, or with ``--tiny``, it runs a tiny random model (``visionzip_kernels.testing.
onevision``) in float32 on the CPU in seconds: this exercises the script (CI), and its rows are
marked ``mode=tiny``: they are not claims.

With ``--publish`` rows go to ``benchmarks/results/onevision_<device>.csv`` (``onevision_<device>_tiny.csv`` in tiny
mode), and a markdown table is printed last.

    python benchmarks/bench_onevision.py                     # GPU: the 7B geometry
    python benchmarks/bench_onevision.py --tiny --results-dir /tmp/onevision
"""
from __future__ import annotations

import argparse
import gc
import sys
from dataclasses import dataclass

import numpy as np
import torch
import transformers
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    Qwen2Config,
    SiglipVisionConfig,
)
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)

from run_environment import add_results_options, device_slug, environment, save_rows
from visionzip_kernels.integrations import apply_visionzip
from visionzip_kernels.integrations.encoder import run_to_layer
from visionzip_kernels.testing.onevision import make_images, tiny_config
from visionzip_kernels.testing.timing import summarise, time_calls

MIB = 1024 * 1024
FULL, PACKAGE, ENCODER = "full", "visionzip_kernels", "encoder"
PROVIDERS = (FULL, PACKAGE, ENCODER)
SYSTEM_TOKENS, QUESTION_TOKENS = 14, 20  # text around the visual tokens (a chat template and a question)


@dataclass(frozen=True)
class Case:
    """One prompt: an image of ``image_size`` (height, width), or a video of ``frames`` frames."""

    name: str
    dominant: int
    contextual: int
    image_size: tuple[int, int] | None = None
    frames: int = 0


@dataclass(frozen=True)
class Setting:
    """A model config, its dtype and device, the cases, and how many rounds and timed calls."""

    mode: str
    config: LlavaOnevisionConfig
    dtype: torch.dtype
    device: torch.device
    cases: tuple[Case, ...]
    rounds: int
    repeats: int
    warmup: int


def onevision_7b_config() -> LlavaOnevisionConfig:
    """LLaVA-OneVision-7B's geometry (``llava-hf/llava-onevision-qwen2-7b-ov-hf``), default pinpoints."""
    vision = SiglipVisionConfig(
        hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
        image_size=384, patch_size=14, vision_use_head=False,
    )
    text = Qwen2Config(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, rope_theta=1e6,
    )
    return LlavaOnevisionConfig(
        vision_config=vision, text_config=text, image_token_index=151646, video_token_index=151647
    )


def gpu_setting() -> Setting:
    cases = (
        Case("image", dominant=62, contextual=11, image_size=(1152, 1536)),
        Case("video", dominant=17, contextual=3, frames=32),
    )
    return Setting("gpu", onevision_7b_config(), torch.bfloat16, torch.device("cuda"), cases,
                   rounds=5, repeats=5, warmup=2)


def tiny_setting() -> Setting:
    pinpoints = [[112 * rows, 112 * cols] for rows in (1, 2, 3) for cols in (1, 2, 3)]
    cases = (
        Case("image", dominant=6, contextual=1, image_size=(224, 336)),
        Case("video", dominant=1, contextual=1, frames=8),
    )
    return Setting("tiny", tiny_config(112, pinpoints), torch.float32, torch.device("cpu"), cases,
                   rounds=2, repeats=2, warmup=1)


def build_model(setting: Setting) -> LlavaOnevisionForConditionalGeneration:
    """The model of ``setting.config``, random weights allocated on the device in its dtype."""
    torch.manual_seed(0)
    with torch.device(setting.device):
        model = LlavaOnevisionForConditionalGeneration._from_config(
            setting.config, dtype=setting.dtype, attn_implementation="sdpa"
        )
    return model.eval()


def visual_inputs(case: Case, setting: Setting) -> dict:
    """Pixels of the case: an image through LLaVA-OneVision's image processor, or random frames."""
    vision = setting.config.vision_config
    if case.image_size is not None:
        processor = LlavaOnevisionImageProcessorPil(
            size={"height": vision.image_size, "width": vision.image_size},
            image_grid_pinpoints=setting.config.image_grid_pinpoints,
        )
        processed = processor(make_images([case.image_size]), return_tensors="pt")
        return {
            "pixel_values": processed["pixel_values"].to(setting.device, setting.dtype),
            "image_sizes": processed["image_sizes"].to(setting.device),
            "batch_num_images": processed["batch_num_images"].to(setting.device),
        }
    generator = torch.Generator().manual_seed(1)
    frames = torch.rand(1, case.frames, 3, vision.image_size, vision.image_size, generator=generator)
    return {"pixel_values_videos": (frames * 2 - 1).to(setting.device, setting.dtype)}


def visual_token_count(model, visual: dict) -> int:
    """Placeholders the prompt needs: the rows of the features the model merges (untimed)."""
    with torch.inference_mode():
        if "pixel_values" in visual:
            features = model.model.get_image_features(**visual).pooler_output
            return sum(len(image) for image in features)
        return model.model.get_video_features(**visual).pooler_output.shape[1]


def prompt_inputs(model, visual: dict, visual_tokens: int, device) -> dict:
    """Random text ids around ``visual_tokens`` placeholders, with the pixels: the model's inputs."""
    config = model.config
    token_id = config.image_token_id if "pixel_values" in visual else config.video_token_id
    generator = torch.Generator().manual_seed(2)
    text_vocab = min(config.image_token_id, config.video_token_id)
    system = torch.randint(text_vocab, (SYSTEM_TOKENS,), generator=generator)
    question = torch.randint(text_vocab, (QUESTION_TOKENS,), generator=generator)
    input_ids = torch.cat([system, torch.full((visual_tokens,), token_id), question])[None].to(device)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), **visual}


class Providers:
    """The three providers of one case on one model: switch to one, then call it."""

    def __init__(self, model, case: Case, setting: Setting):
        self.model, self.case, self.setting = model, case, setting
        self.visual = visual_inputs(case, setting)
        self.handle = None
        full_tokens = visual_token_count(model, self.visual)
        self.use(PACKAGE)
        zipped_tokens = visual_token_count(model, self.visual)
        self.use(FULL)
        self.visual_tokens = {FULL: full_tokens, PACKAGE: zipped_tokens}
        self.inputs = {
            provider: prompt_inputs(model, self.visual, tokens, setting.device)
            for provider, tokens in self.visual_tokens.items()
        }
        pixels = self.visual.get("pixel_values", self.visual.get("pixel_values_videos"))
        self.tower_pixels = pixels.flatten(0, 1)

    def use(self, provider: str) -> None:
        """VisionZip applied for ``visionzip_kernels``, removed otherwise."""
        wanted = provider == PACKAGE
        if wanted and self.handle is None:
            self.handle = apply_visionzip(
                self.model, dominant=self.case.dominant, contextual=self.case.contextual
            )
        elif not wanted and self.handle is not None:
            self.handle.remove()
            self.handle = None

    def call(self, provider: str) -> None:
        with torch.inference_mode():
            if provider == ENCODER:
                run_to_layer(
                    self.model.model.vision_tower, self.tower_pixels, self.model.config.vision_feature_layer
                )
            else:
                self.model(**self.inputs[provider], logits_to_keep=1, use_cache=True)


def peak_memory(providers: Providers, provider: str, device) -> tuple[float, float]:
    """``(peak MiB, peak above what was allocated before the call, MiB)``; NaN on a CPU."""
    if device.type != "cuda":
        return float("nan"), float("nan")
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    resident = torch.cuda.memory_allocated(device)
    providers.call(provider)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return peak / MIB, (peak - resident) / MIB


def measure_case(model, case: Case, setting: Setting, progress) -> list[dict]:
    """Rounds of every provider back to back; one row per provider."""
    providers = Providers(model, case, setting)
    round_medians = {provider: [] for provider in PROVIDERS}
    for round_index in range(setting.rounds):
        shift = round_index % len(PROVIDERS)
        for provider in PROVIDERS[shift:] + PROVIDERS[:shift]:
            providers.use(provider)
            timing = time_calls(
                lambda: providers.call(provider), [()], setting.device,
                warmup=setting.warmup, repeats=setting.repeats,
            )
            round_medians[provider].append(timing.median_ms)
        progress(f"{case.name} round {round_index + 1}/{setting.rounds}: " + ", ".join(
            f"{provider} {medians[-1]:.2f} ms" for provider, medians in round_medians.items()
        ))
    rows = []
    full_median = summarise(round_medians[FULL]).median_ms
    for provider in PROVIDERS:
        providers.use(provider)
        summary = summarise(round_medians[provider])
        peak_mib, above_mib = peak_memory(providers, provider, setting.device)
        visual = providers.visual_tokens.get(provider, "")
        rows.append({
            "mode": setting.mode,
            "case": case.name,
            "image_size": "x".join(map(str, case.image_size)) if case.image_size else "",
            "frames": case.frames or "",
            "tower_images": providers.tower_pixels.shape[0],
            "provider": provider,
            "dominant": case.dominant if provider == PACKAGE else "",
            "contextual": case.contextual if provider == PACKAGE else "",
            "visual_tokens": visual,
            "lm_tokens": visual + SYSTEM_TOKENS + QUESTION_TOKENS if visual != "" else "",
            "dtype": str(setting.dtype).removeprefix("torch."),
            "rounds": setting.rounds,
            "repeats": setting.repeats,
            "median_ms": round(summary.median_ms, 4),
            "p20_ms": round(summary.p20_ms, 4),
            "p80_ms": round(summary.p80_ms, 4),
            "min_round_ms": round(min(round_medians[provider]), 4),
            "max_round_ms": round(max(round_medians[provider]), 4),
            "full_over_this": round(full_median / summary.median_ms, 3),
            "peak_mib": round(peak_mib, 1),
            "peak_above_resident_mib": round(above_mib, 1),
        })
    providers.use(FULL)
    return rows


def render(rows: list[dict]) -> str:
    lines = []
    if rows and rows[0]["mode"] == "tiny":
        lines.append("Tiny random model on the CPU: these rows exercise the script, they are not claims.\n")
    lines += [
        "| case | provider | visual tokens | TTFT ms (median, round range) | full / this "
        "| peak MiB (above resident) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        label = row["provider"] if row["provider"] != ENCODER else "encoder only (bound)"
        budget = f" ({row['dominant']} + {row['contextual']} per {'crop' if row['case'] == 'image' else 'frame'})" \
            if row["provider"] == PACKAGE else ""
        memory = "" if np.isnan(row["peak_mib"]) else f"{row['peak_mib']:.0f} ({row['peak_above_resident_mib']:.0f})"
        lines.append(
            f"| {row['case']} | {label} | {row['visual_tokens']}{budget} "
            f"| {row['median_ms']:.2f} [{row['min_round_ms']:.2f}-{row['max_round_ms']:.2f}] "
            f"| {row['full_over_this']:.2f}x | {memory} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true",
                        help="tiny random model in float32 on the CPU (automatic without CUDA)")
    add_results_options(parser)
    args = parser.parse_args(argv)
    setting = tiny_setting() if args.tiny or not torch.cuda.is_available() else gpu_setting()

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    model = build_model(setting)
    env = dict(environment(setting.device), transformers=transformers.__version__)
    rows = [dict(env, **row) for case in setting.cases for row in measure_case(model, case, setting, progress)]
    suffix = "_tiny" if setting.mode == "tiny" else ""
    save_rows(args.results_dir, f"onevision_{device_slug(setting.device)}{suffix}.csv", rows)
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
