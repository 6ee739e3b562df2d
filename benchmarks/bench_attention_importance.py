"""How much time and memory does VisionZip's encoder pass save when the attention it reads comes from
``attention_importance`` instead of ``output_attentions=True``?

Providers, on random-weight CLIP-L/336 (577 tokens, 16 heads of 64, 24 layers) and
SigLIP-SO400M/384 (729 tokens, no CLS, 16 heads of 72, 27 layers) vision encoders:

- ``published`` (a): the published way: eager attention in every layer with
  ``output_attentions=True`` and ``output_hidden_states=True``, keeping ``hidden_states[-2]`` and
  ``attentions[-2]`` (every layer's ``[B, H, N, N]`` map is materialised on the way);
- ``package`` (b): ``run_to_penultimate`` (SDPA in every layer, the last layer not run, the
  penultimate layer's q and k captured) then ``attention_importance`` on that layer;
- ``importance`` / ``importance_reference``: ``attention_importance`` alone on the captured q, k
  (automatic backend / eager reference), to see whether it weighs anything next to the encoder.

On a GPU: bfloat16, the models' full depth, batches 1, 5 and 32, 20 timed calls after 3 warm-up
calls, CUDA-event timing; peak memory is ``torch.cuda.max_memory_allocated`` during one call minus
what was allocated before it (weights, inputs). On the CPU, so that the run takes a minute or two:
float32, batch 1, the first 4 layers only (the skipped last layer is then 1/4 of the depth instead
of 1/24 or 1/27, which flatters (b)'s time, and (a) keeps 4 maps instead of 24 or 27, which
understates its memory), 5 timed calls after one warm-up call (4x as many for the importance
rows), wall-clock timing; peak memory is the
largest total of tensor storages the call allocated that were alive at once (recorded op by op, in
a separate call). Times are medians with p20/p80.

With ``--publish`` rows go to ``benchmarks/results/attention_importance_<device>.csv``; the (b)/(a) time and memory
ratios and a table are printed last.

    python benchmarks/bench_attention_importance.py
    python benchmarks/bench_attention_importance.py --models clip --batches 1 8 --layers 24
"""
from __future__ import annotations

import argparse
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_environment import add_results_options, device_slug, environment, save_rows  # noqa: E402

from visionzip_kernels import attention_importance  # noqa: E402
from visionzip_kernels.integrations.encoder import has_cls_token, run_to_penultimate  # noqa: E402
from visionzip_kernels.testing.timing import time_calls  # noqa: E402

MIB = 1 << 20
CPU_LAYERS = 4  # the full encoders take tens of seconds per call on a few CPU cores


@dataclass(frozen=True)
class Geometry:
    """A vision encoder's shape: ``image_size // patch_size`` squared patches (+ CLS for CLIP)."""

    name: str
    model_class: type
    config_class: type
    hidden_size: int
    intermediate_size: int
    layers: int
    heads: int
    image_size: int
    patch_size: int
    hidden_act: str

    def build(self, layers: int, device: torch.device, dtype: torch.dtype):
        config = self.config_class(
            hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=layers, num_attention_heads=self.heads, image_size=self.image_size,
            patch_size=self.patch_size, hidden_act=self.hidden_act,
        )
        torch.manual_seed(0)
        with torch.device(device):
            model = self.model_class(config)
        return model.to(dtype).eval()


GEOMETRIES = {
    "clip": Geometry(
        "CLIP-L/336", CLIPVisionModel, CLIPVisionConfig, 1024, 4096, 24, 16, 336, 14, "quick_gelu"
    ),
    "siglip": Geometry(
        "SigLIP-SO400M/384", SiglipVisionModel, SiglipVisionConfig, 1152, 4304, 27, 16, 384, 14,
        "gelu_pytorch_tanh",
    ),
}


def published(model):
    def run(pixel_values):
        out = model(pixel_values, output_hidden_states=True, output_attentions=True)
        return out.hidden_states[-2], out.attentions[-2]

    return run


def package(model):
    has_cls = has_cls_token(model)

    def run(pixel_values):
        outputs = run_to_penultimate(model, pixel_values)
        importance = attention_importance(outputs.query, outputs.key, has_cls, outputs.scale)
        return outputs.hidden, importance, outputs.key

    return run


def importance_only(model, backend: str):
    has_cls = has_cls_token(model)

    def run(query, key, scale):
        return attention_importance(query, key, has_cls, scale, backend=backend)

    return run


class LiveStorageBytes(TorchDispatchMode):
    """The largest total of storages allocated by ops under this mode that were alive at once.

    An op's output counts when its storage is none of its inputs' (views and in-place results
    are not new); it stops counting when the storage is freed.
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
        }
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage._cdata
            if key in inputs or key in self._seen:
                continue
            self._seen.add(key)
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._release, key, storage.nbytes())
        return out


def peak_mib(fn, args: tuple, device: torch.device) -> float:
    """Memory one call of ``fn(*args)`` allocates at its peak, above what was allocated before."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn(*args)
        torch.cuda.synchronize(device)
        del result
        return (torch.cuda.max_memory_allocated(device) - before) / MIB
    with LiveStorageBytes() as recorder:
        result = fn(*args)
    del result
    return recorder.peak / MIB


def measure(geometry: Geometry, layers: int, batches, device, dtype, repeats: int, env: dict) -> list[dict]:
    model = geometry.build(layers, device, dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    head_dim = geometry.hidden_size // geometry.heads
    rows = []
    for batch in batches:
        size = geometry.image_size
        pixel_sets = [
            (torch.randn(batch, 3, size, size, generator=gen, device=device, dtype=dtype),) for _ in range(2)
        ]
        captured = [run_to_penultimate(model, *pixels) for pixels in pixel_sets]
        qk_sets = [(out.query, out.key, out.scale) for out in captured]
        # The importance rows do not run the model, and take 4x the samples: they are cheap.
        calls = [
            ("published", "eager", published(model), pixel_sets, repeats),
            ("package", "sdpa", package(model), pixel_sets, repeats),
            ("importance", "", importance_only(model, "auto"), qk_sets, 4 * repeats),
            ("importance_reference", "", importance_only(model, "reference"), qk_sets, 4 * repeats),
        ]

        for provider, attn_implementation, fn, arg_sets, samples in calls:
            if attn_implementation:
                model.set_attn_implementation(attn_implementation)
            warmup = 1 if device.type == "cpu" else 3  # one CPU encoder call takes seconds
            timing = time_calls(fn, arg_sets, device, warmup=warmup, repeats=samples)
            rows.append({
                **env, "model": geometry.name, "dtype": str(dtype).removeprefix("torch."), "batch": batch,
                "n_tokens": captured[0].hidden.shape[1], "heads": geometry.heads, "head_dim": head_dim,
                "layers": layers, "provider": provider, "attn_implementation": attn_implementation,
                "median_ms": round(timing.median_ms, 4), "p20_ms": round(timing.p20_ms, 4),
                "p80_ms": round(timing.p80_ms, 4), "repeats": timing.repeats,
                "peak_mib": round(peak_mib(fn, arg_sets[0], device), 2),
            })
        model.set_attn_implementation("sdpa")
        del captured, qk_sets, pixel_sets
    return rows


def print_ratios(rows: list[dict]) -> None:
    print("\n(b) package / (a) published; importance share = importance / package time")
    for key in sorted({(r["model"], r["batch"]) for r in rows}):
        by = {r["provider"]: r for r in rows if (r["model"], r["batch"]) == key}
        a, b, imp = by["published"], by["package"], by["importance"]
        print(f"{key[0]:18} B={key[1]:<3} time {b['median_ms'] / a['median_ms']:.3f} "
              f"({a['median_ms'] / b['median_ms']:.2f}x faster), memory {b['peak_mib'] / a['peak_mib']:.3f} "
              f"({a['peak_mib'] / b['peak_mib']:.1f}x less), "
              f"importance share {imp['median_ms'] / b['median_ms']:.1%}")


def print_table(rows: list[dict]) -> None:
    print(f"\nattention_importance vs output_attentions on {rows[0]['device']} ({rows[0]['dtype']}); "
          f"median (p20-p80) of {rows[0]['repeats']} calls; peak = memory allocated by one call above weights and inputs")
    header = (f"{'model':18} {'layers':>6} {'B':>3} {'N':>4}  {'provider':21} {'median ms':>10} "
              f"{'p20-p80 ms':>21} {'peak MiB':>10}")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['model']:18} {row['layers']:>6} {row['batch']:>3} {row['n_tokens']:>4}  "
              f"{row['provider']:21} {row['median_ms']:>10.2f} {row['p20_ms']:>10.2f}-{row['p80_ms']:<10.2f} "
              f"{row['peak_mib']:>10.1f}")


def main(argv=None) -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu", help="where to run (default: cuda if present, else cpu)")
    parser.add_argument("--models", nargs="+", choices=sorted(GEOMETRIES), default=sorted(GEOMETRIES),
                        help="encoder geometries (default: all)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 5, 32] if cuda else [1],
                        help="images per call (default: 1 5 32 on a GPU, 1 on the CPU)")
    parser.add_argument("--layers", type=int, default=None,
                        help="encoder depth (default: the model's on a GPU, 4 on the CPU)")
    parser.add_argument("--repeats", type=int, default=20 if cuda else 5,
                        help="timed calls per row (default: 20 on a GPU, 5 on the CPU)")
    add_results_options(parser)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    env = {**environment(device), "transformers": transformers.__version__}
    rows = []
    with torch.inference_mode():
        for name in args.models:
            geometry = GEOMETRIES[name]
            layers = args.layers or (geometry.layers if device.type == "cuda" else CPU_LAYERS)
            rows += measure(geometry, layers, args.batches, device, dtype, args.repeats, env)
    save_rows(args.results_dir, f"attention_importance_{device_slug(device)}.csv", rows)
    print_ratios(rows)
    print_table(rows)


if __name__ == "__main__":
    main()
