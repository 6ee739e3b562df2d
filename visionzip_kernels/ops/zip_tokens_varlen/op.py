"""``zip_tokens_varlen``: ``zip_tokens`` on a packed batch of images of different sizes.

The public function, its validation, its backends and their registration. Per segment (image) of
the packed ``hidden`` ``[T_total, D]``, the contract of ``zip_tokens`` (``docs/CONTRACT.md``) with
no CLS token: the ``k_dom`` tokens of highest importance (ties to the lower index, non-finite
last), then ``k_ctx`` targets every ``max(1, M // k_ctx)``-th of the ``M`` remaining tokens in
index order, each remaining token merged into the target of highest cosine similarity of its key
(ties to the lower target), in the contract's fixed float32 order. Output in the published
Qwen2.5-VL order: per segment, the kept tokens (dominant and targets) in ascending index order,
each target's row being ``hidden[target] + mean(hidden[merged into it])``.

Backends (``backend=``):

- ``"reference"``: PyTorch, a loop over segments (``reference.py``), any device;
- ``"cpu"``: the C++ CPU kernel (``csrc/zip_tokens_varlen_cpu.cpp``), parallel over segments, CPU
  tensors;
- ``"triton"``: two Triton launches over all segments at once (``triton.py``,
  ``triton_kernels.py``), CUDA tensors, or CPU tensors through Triton's interpreter when
  ``TRITON_INTERPRET=1`` is set;
- ``"cuda"``: the CUDA C++ kernels (``csrc/zip_tokens_varlen_cuda.cu``), one block per segment,
  CUDA tensors, when that extension was built; no copy from the host and no synchronisation, so
  a CUDA graph can capture it. Compile-checked and run on the CPU by emulation only so far:
  ``"auto"`` prefers the Triton backend on CUDA until a GPU run has measured and checked it;
- ``"auto"``: the first of ``available_backends(device)``.

``torch.ops.visionzip.zip_tokens_varlen`` is the same op with per-segment integer budgets already
resolved and the automatic choice; its fake kernel gives the output shapes to ``torch.compile``.
"""
from __future__ import annotations

import torch

from ... import checks, varlen
from ...backends import OpBackends, on_any_device, on_cpu, on_cuda_extension, on_triton_device
from . import reference

OP = "zip_tokens_varlen"

BACKENDS = OpBackends(
    OP, preference={"cpu": ("cpu", "triton", "reference"), "cuda": ("triton", "cuda", "reference")}
)
BACKENDS.add_op("cpu", on_cpu, "_zip_tokens_varlen_cpu")
BACKENDS.add_python_kernel(
    "triton",
    on_triton_device,
    "_zip_tokens_varlen_triton",
    "visionzip_kernels.ops.zip_tokens_varlen.triton",
    "zip_tokens_varlen_triton",
)
BACKENDS.add_op("cuda", on_cuda_extension, "_zip_tokens_varlen_cuda")
BACKENDS.add("reference", on_any_device, reference.zip_tokens_varlen)


def check_tensors(hidden, importance, cu_seqlens, keys) -> None:
    """Types, ranks, sizes and devices of the tensor arguments."""
    checks.check_float_tensor(hidden, "hidden", OP, {2: "[T_total, D]"})
    checks.check_float_tensor(importance, "importance", OP, {1: "[T_total]"})
    if keys is not None:
        checks.check_float_tensor(keys, "keys", OP, {2: "[T_total, Dk]"})
    total = hidden.shape[0]
    if importance.shape[0] != total:
        raise ValueError(
            f"{OP}: `importance` must be [T_total] with T_total={total} like `hidden` "
            f"{tuple(hidden.shape)}, got shape {tuple(importance.shape)}"
        )
    if keys is not None and keys.shape[0] != total:
        raise ValueError(
            f"{OP}: `keys` must be [T_total, Dk] with T_total={total} like `hidden` "
            f"{tuple(hidden.shape)}, got shape {tuple(keys.shape)}"
        )
    checks.check_nonempty_dims(hidden, "hidden", OP, {1: "D"})
    if keys is not None:
        checks.check_nonempty_dims(keys, "keys", OP, {1: "Dk"})
    checks.check_same_device({"hidden": hidden, "importance": importance, "keys": keys}, "hidden", OP)
    varlen.check_cu_seqlens(cu_seqlens, hidden.device, OP)


def check_budgets(sizes: list[int], k_dom: list[int], k_ctx: list[int]) -> None:
    """Every segment keeps at most its tokens: ``k_dom[i] + k_ctx[i] <= seqlens[i]``."""
    for segment, (size, n_dom, n_ctx) in enumerate(zip(sizes, k_dom, k_ctx)):
        if n_dom + n_ctx > size:
            raise ValueError(
                f"{OP}: segment {segment} holds {size} tokens but keeps {n_dom} dominant + {n_ctx} "
                f"contextual = {n_dom + n_ctx}; `dominant` + `contextual` must not exceed a segment"
            )


def check_zip_tokens_varlen_args(
    hidden, importance, cu_seqlens, seqlens, k_dom, k_ctx, keys=None, read_offsets=True
) -> tuple[list[int], list[int], list[int]]:
    """``(seqlens, k_dom, k_ctx)`` as lists of ints for the ``torch.ops`` op's arguments, or a
    ``TypeError``/``ValueError`` naming the argument. ``read_offsets=False`` (the fake kernel)
    skips comparing a CPU ``cu_seqlens`` with ``seqlens``."""
    check_tensors(hidden, importance, cu_seqlens, keys)
    if seqlens is None:
        raise TypeError(f"{OP}: `seqlens` must be a list of ints, got None")
    sizes = varlen.resolve_seqlens(cu_seqlens, seqlens, hidden.shape[0], OP, read_cu_seqlens=read_offsets)
    k_dom = varlen.check_int_list(k_dom, "k_dom", len(sizes), OP)
    k_ctx = varlen.check_int_list(k_ctx, "k_ctx", len(sizes), OP)
    check_budgets(sizes, k_dom, k_ctx)
    return sizes, k_dom, k_ctx


def available_backends(device) -> list[str]:
    """The ``zip_tokens_varlen`` backends that run on ``device``, fastest first."""
    return BACKENDS.available(device)


def run_backend(hidden, importance, cu_seqlens, sizes, k_dom, k_ctx, keys, backend):
    """Validated arguments -> ``(tokens, kept_idx, cu_kept)`` from the chosen backend."""
    chosen = BACKENDS.resolve(backend, hidden.device)
    return chosen.run(hidden, importance, cu_seqlens, sizes, k_dom, k_ctx, keys)


def zip_tokens_varlen(
    hidden: torch.Tensor,
    importance: torch.Tensor,
    cu_seqlens: torch.Tensor,
    dominant: int | float,
    contextual: int | float,
    keys: torch.Tensor | None = None,
    *,
    seqlens: list[int] | tuple[int, ...] | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """VisionZip's kept tokens for every image of a packed batch, in raster order per image.

    hidden: ``[T_total, D]`` tokens of ``n`` images packed back to back; importance: ``[T_total]``
    (the attention each token receives, e.g. ``pool_merge_units(attention_importance_varlen(...))``);
    keys: ``[T_total, Dk]`` similarity metric, or ``None`` for ``hidden`` itself; float32, float16
    or bfloat16 each, on one device. cu_seqlens: ``[n + 1]`` int32/int64 segment offsets, on the
    CPU or that device.

    seqlens: the ``n`` segment sizes as host ints (e.g. ``image_grid_thw.prod(-1) // 4``). **The
    sizes must be known on the host**: pass ``seqlens``, or a ``cu_seqlens`` on the CPU (it is
    then read); a GPU ``cu_seqlens`` without ``seqlens`` is refused, since reading it would
    synchronise. With both given, they are compared on the CPU; on a GPU ``seqlens`` is trusted
    (a ``cu_seqlens`` that disagrees gives unspecified values, never an access out of bounds; the
    ``"cuda"`` backend compares them on the device and gives the segments whose offsets disagree
    kept index -1 and NaN rows).

    dominant, contextual: an ``int`` is a token count for every segment; a ``float`` in ``[0, 1]``
    a fraction of each segment's ``T_i`` tokens, rounded as published: ``int(dominant * T_i)`` and
    ``max(int(contextual * T_i), 1)`` (so ``1`` is one token, ``1.0`` all of them). Every segment
    must keep at most its tokens.

    Returns ``tokens`` ``[K_total, D]`` in ``hidden``'s dtype, ``kept_idx`` ``[K_total]`` int64
    (indices into ``T_total``, ascending within each segment) and ``cu_kept`` ``[n + 1]`` int64
    (the segments' offsets in the output), all on ``hidden``'s device. A kept contextual target's
    row is ``hidden[target] + mean(hidden[merged])`` (accumulated in float32, rounded once); a
    dominant row is copied exactly. No device data is read on the host.
    """
    check_tensors(hidden, importance, cu_seqlens, keys)
    sizes = varlen.resolve_seqlens(cu_seqlens, seqlens, hidden.shape[0], OP)
    k_dom = varlen.segment_budgets(dominant, "dominant", sizes, at_least_one=False, caller=OP)
    k_ctx = varlen.segment_budgets(contextual, "contextual", sizes, at_least_one=True, caller=OP)
    check_budgets(sizes, k_dom, k_ctx)
    return run_backend(hidden, importance, cu_seqlens, sizes, k_dom, k_ctx, keys, backend)


def zip_tokens_varlen_fake(hidden, importance, cu_seqlens, seqlens, k_dom, k_ctx, keys=None):
    """The outputs' shapes and dtypes, for ``torch.compile``."""
    sizes, k_dom, k_ctx = check_zip_tokens_varlen_args(
        hidden, importance, cu_seqlens, seqlens, k_dom, k_ctx, keys, read_offsets=False
    )
    kept = sum(k_dom) + sum(k_ctx)
    return (
        hidden.new_empty(kept, hidden.shape[1]),
        hidden.new_empty(kept, dtype=torch.int64),
        hidden.new_empty(len(sizes) + 1, dtype=torch.int64),
    )


def _zip_tokens_varlen_auto(hidden, importance, cu_seqlens, seqlens, k_dom, k_ctx, keys=None):
    sizes, k_dom, k_ctx = check_zip_tokens_varlen_args(hidden, importance, cu_seqlens, seqlens, k_dom, k_ctx, keys)
    return run_backend(hidden, importance, cu_seqlens, sizes, k_dom, k_ctx, keys, "auto")


BACKENDS.register(zip_tokens_varlen_fake, _zip_tokens_varlen_auto)
