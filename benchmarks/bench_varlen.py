"""How long do the varlen ops take on a packed batch of Qwen2.5-VL images, per backend, and how
much memory does the statistic take next to the published dense softmax?

Qwen2.5-VL-7B geometry: the last vision block's q, k ``[4T, 16, 80]`` (patches) and the language
model's ``[T, 3584]`` image embeddings (merged tokens), ``T = (H / 28) * (W / 28)`` per image.
Batches: one image, and several images of different sizes packed together. Providers:

- ``attention_importance_varlen/<backend>``: the statistic per image, never a ``T_i x T_i`` map;
- ``attention_dense_published``: the published port's statistic, a dense ``[H, N, N]`` softmax
  over the whole packed sequence (``N = sum 4 T_i``), mean over heads, sum over queries;
- ``zip_tokens_varlen/<backend>``: the selection and merge at 0.65 + 0.05 on the embeddings.

On a GPU: bfloat16, 1024x1024 images (``T = 1369``), 20 timed calls after 3 warm-up calls, CUDA
events; peak memory is ``torch.cuda.max_memory_allocated`` during one call minus what was
allocated before. On the CPU, so that the run takes a minute: float32, 448x448-class images,
5 timed calls, wall clock, no memory column. Times are medians with p20/p80.

With ``--publish`` rows go to ``benchmarks/results/varlen_<device>.csv``; a table is printed last.

    python benchmarks/bench_varlen.py
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_environment import add_results_options, device_slug, environment, save_rows  # noqa: E402

import visionzip_kernels as vz  # noqa: E402
from visionzip_kernels.ops.attention_importance_varlen import available_backends as importance_backends  # noqa: E402
from visionzip_kernels.ops.zip_tokens_varlen import available_backends as zip_backends  # noqa: E402
from visionzip_kernels.testing.timing import time_calls  # noqa: E402

HEADS, HEAD_DIM, LM_WIDTH = 16, 80, 3584
MIB = 1 << 20
# (height, width) in pixels after Qwen's resize to multiples of 28 (1024 -> 1036: 37 x 37 = 1369
# merged tokens); each batch's images are packed into one sequence.
GPU_BATCHES = {"1x1024^2": [(1036, 1036)], "4 mixed": [(1036, 1036), (812, 448), (336, 336), (672, 672)]}
CPU_BATCHES = {"1x448^2": [(448, 448)], "3 mixed": [(448, 448), (336, 504), (224, 224)]}


def merged_tokens(image: tuple[int, int]) -> int:
    return (image[0] // 28) * (image[1] // 28)


def dense_published(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The published statistic: dense softmax over the packed sequence, heads averaged, queries summed."""
    scores = torch.einsum("ihd,jhd->hij", q, k) * HEAD_DIM**-0.5
    return torch.softmax(scores.float(), dim=-1).mean(dim=0).sum(dim=0)


def measure(fn, args, device: torch.device, repeats: int) -> dict:
    timing = time_calls(fn, [args], device, warmup=3 if device.type == "cuda" else 1, repeats=repeats)
    row = {"median_ms": timing.median_ms, "p20_ms": timing.p20_ms, "p80_ms": timing.p80_ms, "repeats": timing.repeats,
           "peak_mib": ""}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn(*args)
        torch.cuda.synchronize(device)
        row["peak_mib"] = round((torch.cuda.max_memory_allocated(device) - before) / MIB, 1)
    return row


def run(device: torch.device, batches: dict, dtype: torch.dtype, repeats: int) -> list[dict]:
    rows = []
    gen = torch.Generator(device="cpu").manual_seed(0)
    for batch_name, images in batches.items():
        sizes = [merged_tokens(image) for image in images]
        patches = [4 * size for size in sizes]
        total, total_patches = sum(sizes), sum(patches)
        q = torch.randn(total_patches, HEADS, HEAD_DIM, generator=gen).to(device, dtype)
        k = torch.randn(total_patches, HEADS, HEAD_DIM, generator=gen).to(device, dtype)
        hidden = torch.randn(total, LM_WIDTH, generator=gen).to(device, dtype)
        cu_patches = torch.tensor([0, *torch.tensor(patches).cumsum(0).tolist()], dtype=torch.int32, device=device)
        cu_tokens = torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()], dtype=torch.int32, device=device)
        importance = vz.pool_merge_units(vz.attention_importance_varlen(q, k, cu_patches, seqlens=patches))
        keys = vz.pool_merge_units(k).mean(dim=1)
        shape = f"T={'+'.join(map(str, sizes))}"

        providers = [
            (f"attention_importance_varlen/{backend}",
             lambda q, k, b=backend: vz.attention_importance_varlen(q, k, cu_patches, seqlens=patches, backend=b),
             (q, k))
            for backend in importance_backends(device) if backend != "reference"
        ]
        providers.append(("attention_dense_published", dense_published, (q, k)))
        providers += [
            (f"zip_tokens_varlen/{backend}",
             lambda h, s, kk, b=backend: vz.zip_tokens_varlen(h, s, cu_tokens, 0.65, 0.05, kk, seqlens=sizes, backend=b),
             (hidden, importance, keys))
            for backend in zip_backends(device)
        ]
        for provider, fn, args in providers:
            row = {**environment(device), "batch": batch_name, "shape": shape, "dtype": str(dtype).removeprefix("torch."),
                   "provider": provider}
            row.update(measure(fn, args, device, repeats))
            rows.append(row)
            print(f"{batch_name:10} {provider:38} {row['median_ms']:9.3f} ms ({row['p20_ms']:.3f}-{row['p80_ms']:.3f}, "
                  f"{row['repeats']} calls)  {row['peak_mib']}", flush=True)
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"\nvarlen ops on {rows[0]['device']} ({rows[0]['dtype']}); median, p20, p80 of {rows[0]['repeats']} calls")
    header = f"{'batch':10} {'shape':22} {'provider':38} {'median ms':>10} {'p20':>9} {'p80':>9} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['batch']:10} {row['shape']:22} {row['provider']:38} {row['median_ms']:10.3f} "
              f"{row['p20_ms']:9.3f} {row['p80_ms']:9.3f} {row['peak_mib']!s:>9}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_results_options(parser)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        rows = run(device, GPU_BATCHES, torch.bfloat16, repeats=20)
    else:
        rows = run(device, CPU_BATCHES, torch.float32, repeats=5)
    save_rows(args.results_dir, f"varlen_{device_slug(device)}.csv", rows)
    print_table(rows)


if __name__ == "__main__":
    main()
