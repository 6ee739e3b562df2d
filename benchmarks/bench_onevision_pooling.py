"""LLaVA-OneVision video: zip each frame before or after the model's 2 x 2 pooling? Token counts.

The stock model projects each frame's tower tokens and pools them 2 x 2 (bilinear) before the
language model. VisionZip can take a frame's ``t`` tokens from the tower's tokens, before the
pooling (what ``integrations/llava_onevision.py`` does; the pooling is then not run), or from the
pooled tokens, after it (measured here only: the tower's attention importance and keys are pooled
the same way, since the pooled tokens have no attention of their own). On the tiny random model
of ``visionzip_kernels.testing.onevision`` (8 x 8 = 64 tower tokens per frame, 4 x 4 = 16 after the
pooling; budget 5 + 3 per frame), and at the released models' frame size with the same tiny widths
(27 x 27 = 729 tower tokens, 14 x 14 = 196 pooled; budget 17 + 3, about 10% of 196), with videos
of 4 and 8 frames, this counts for each choice:

- candidates: the tokens per frame VisionZip chooses from, so the largest budget per frame;
- projector rows: tokens per frame through the projector (counted by a hook on it);
- patches per dominant token: tower patches blended into one kept dominant token (1 before the
  pooling; after it, the patches with a nonzero bilinear weight in the chosen pooled token);
- language-model tokens per video: the features' rows (and the stock model's, for comparison).

Runs on the CPU in seconds; with ``--publish`` rows go to ``benchmarks/results/onevision_pooling.csv`` (counts, not
timings: they do not depend on the device).

    python benchmarks/bench_onevision_pooling.py [--results-dir DIR]
"""
from __future__ import annotations

import argparse
import sys

import torch

from run_environment import add_results_options, environment, save_rows

from visionzip_kernels import attention_importance, zip_tokens
from visionzip_kernels.integrations import apply_visionzip
from visionzip_kernels.integrations.encoder import run_to_layer
from visionzip_kernels.testing.onevision import make_video, tiny_model, tiny_processor

# (frame size in pixels, dominant, contextual): the tests' tiny model (8 x 8 patches, 16 pooled,
# budget 5 + 3) and the same tiny widths at the released models' 384-pixel frames (27 x 27 = 729
# patches, 14 x 14 = 196 pooled) with about 10% of the 196 pooled tokens (17 + 3).
GEOMETRIES = ((112, 5, 3), (384, 17, 3))
FRAMES = (4, 8)


def pooling_weights(model, tokens: int) -> torch.Tensor:
    """``[pooled, tokens]``: the weight of each tower token in each pooled token (the model's own
    pooling applied to one-hot features)."""
    return model.apply_pooling(torch.eye(tokens)[None])[0]


def zip_after_pooling(model, frames: torch.Tensor, layer: int, dominant: int, contextual: int):
    """VisionZip on the pooled tokens of ``frames`` ``[F, 3, H, W]``: the projected tower tokens
    pooled as the stock model pools them, with the importance and keys pooled the same way.

    Returns ``(features [F, t, D_text], dominant_idx [F, dominant])``, indices among pooled tokens.
    """
    outputs = run_to_layer(model.vision_tower, frames, layer)
    importance = attention_importance(outputs.query, outputs.key, False, outputs.scale)
    pooled = model.apply_pooling(model.multi_modal_projector(outputs.hidden))
    pooled_importance = model.apply_pooling(importance.transpose(1, 2)).transpose(1, 2)
    batch, heads, _, head_dim = outputs.key.shape
    pooled_keys = model.apply_pooling(outputs.key.transpose(1, 2).flatten(2))
    pooled_keys = pooled_keys.view(batch, -1, heads, head_dim).transpose(1, 2)
    return zip_tokens(pooled, pooled_importance, dominant, contextual, pooled_keys, False)


def measure(image_size: int, dominant: int, contextual: int, frames_count: int) -> list[dict]:
    """Both choices on one video of ``frames_count`` frames: the rows of the module docstring."""
    pinpoints = [[image_size, image_size]]
    model, processor = tiny_model(image_size, pinpoints), tiny_processor(image_size, pinpoints)
    inner, layer = model.model, model.config.vision_feature_layer
    video = make_video(frames_count, height=image_size, width=image_size)
    video = processor.video_processor([video], return_tensors="pt")["pixel_values_videos"]
    projected_rows = []
    hook = inner.multi_modal_projector.register_forward_hook(
        lambda module, args, output: projected_rows.append(args[0].shape[:-1].numel())
    )
    tower_tokens = (image_size // model.config.vision_config.patch_size) ** 2
    weights = pooling_weights(inner, tower_tokens)
    with torch.no_grad():
        stock_rows = inner.get_video_features(video).pooler_output.shape[1]
        with apply_visionzip(model, dominant=dominant, contextual=contextual):
            before = inner.get_video_features(video)
        after_features, after_idx = zip_after_pooling(inner, video[0], layer, dominant, contextual)
    hook.remove()
    stock_projected, before_projected, after_projected = projected_rows
    assert stock_projected == after_projected, "after the pooling, the projector runs as in the stock model"
    blend = (weights[after_idx] > 0).sum(dim=-1).float().mean().item()
    common = dict(frames=frames_count, frame_pixels=image_size, tower_tokens=tower_tokens,
                  pooled_tokens=weights.shape[0], dominant=dominant, contextual=contextual,
                  stock_lm_tokens=stock_rows)
    return [
        dict(common, choice="before_pooling", candidates=tower_tokens, largest_budget=tower_tokens,
             projector_rows_per_frame=before_projected // frames_count, patches_per_dominant=1.0,
             lm_tokens=before.pooler_output.shape[1]),
        dict(common, choice="after_pooling", candidates=weights.shape[0], largest_budget=weights.shape[0],
             projector_rows_per_frame=after_projected // frames_count, patches_per_dominant=round(blend, 2),
             lm_tokens=frames_count * after_features.shape[1] + 1),
    ]


def render(rows: list[dict]) -> str:
    lines = [
        "| frame px | budget | frames | choice | candidates / frame | largest budget / frame "
        "| projector rows / frame | patches per dominant token | LM tokens (stock) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['frame_pixels']} | {row['dominant']} + {row['contextual']} | {row['frames']} "
            f"| {row['choice']} | {row['candidates']} | {row['largest_budget']} "
            f"| {row['projector_rows_per_frame']} | {row['patches_per_dominant']:g} "
            f"| {row['lm_tokens']} ({row['stock_lm_tokens']}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_results_options(parser)
    args = parser.parse_args(argv)
    env = environment(torch.device("cpu"))
    rows = [
        dict(env, **row)
        for geometry in GEOMETRIES
        for frames in FRAMES
        for row in measure(*geometry, frames)
    ]
    save_rows(args.results_dir, "onevision_pooling.csv", rows)
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
