"""``attention_importance_varlen``: the attention each key receives, per segment of a packed batch.

For packed queries and keys ``[T_total, H, hd]`` of one attention layer over ``n`` segments (one
per image, each attending only within itself, as Qwen-VL's encoders do with ``cu_seqlens``), the
importance ``[T_total]`` float32 of every key: the **sum** over its segment's queries of the
softmax attention it receives, **averaged** over heads (``reference.py`` is the definition). This
is the statistic of the published Qwen2.5-VL VisionZip port (dense softmax, mean over heads, sum
over queries) per image, before its 2x2 pooling: ``pool_merge_units(importance, window_index)``
is its ``attn_mean`` (``merge_units.py``). It never holds a ``T_i x T_i`` map per segment, so the
encoder keeps FlashAttention/SDPA.

``attention_importance_varlen(..., backend=...)`` validates its arguments once, here, then runs one
backend:

- ``"reference"``: eager softmax per segment (``reference.py``), any device;
- ``"blockwise"``: PyTorch over segments and blocks of query rows (``blockwise.py``), any device;
- ``"triton"``: two flash-style Triton passes over the whole packed sequence (``triton.py``), CUDA
  tensors, or CPU tensors through Triton's interpreter when ``TRITON_INTERPRET=1`` is set;
- ``"auto"``: the first of ``available_backends(device)``: ``"blockwise"`` on CPU, ``"triton"``
  on CUDA.

Accuracy: scores, exponentials and sums in float32 on every backend, as ``attention_importance``.
``torch.ops.visionzip.attention_importance_varlen`` is the same op (with ``seqlens`` required) and
the automatic choice.
"""
from __future__ import annotations

import torch

from ... import checks, varlen
from ...backends import OpBackends, on_any_device, on_triton_device
from .blockwise import attention_importance_varlen_blockwise
from .reference import attention_importance_varlen as attention_importance_varlen_reference

OP = "attention_importance_varlen"

BACKENDS = OpBackends(
    OP, preference={"cpu": ("blockwise", "triton", "reference"), "cuda": ("triton", "blockwise", "reference")}
)
BACKENDS.add("blockwise", on_any_device, attention_importance_varlen_blockwise)
BACKENDS.add_python_kernel(
    "triton",
    on_triton_device,
    "_attention_importance_varlen_triton",
    "visionzip_kernels.ops.attention_importance_varlen.triton",
    "attention_importance_varlen_triton",
)
BACKENDS.add("reference", on_any_device, attention_importance_varlen_reference)


def check_tensors(q, k, cu_seqlens, scale, lse) -> float:
    """The softmax scale (``hd ** -0.5`` when ``None``), after checking every argument but ``seqlens``."""
    for name, tensor in (("q", q), ("k", k)):
        checks.check_float_tensor(tensor, name, OP, {3: "[T_total, H, hd]"})
        checks.check_nonempty_dims(tensor, name, OP, {1: "H", 2: "hd"})
    if k.shape != q.shape:
        raise ValueError(f"{OP}: `k` must have the shape of `q` {tuple(q.shape)}, got {tuple(k.shape)}")
    if k.dtype != q.dtype:
        raise ValueError(f"{OP}: `k` must have the dtype of `q` ({q.dtype}), got {k.dtype}")
    scale = checks.check_optional_float(scale, "scale", OP)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if lse is not None:
        if not isinstance(lse, torch.Tensor):
            raise TypeError(f"{OP}: `lse` must be a torch.Tensor or None, got {type(lse).__name__}")
        expected = (q.shape[1], q.shape[0])
        if tuple(lse.shape) != expected:
            raise ValueError(f"{OP}: `lse` must be [H, T_total] = {expected}, got shape {tuple(lse.shape)}")
        if lse.dtype != torch.float32:
            raise ValueError(f"{OP}: `lse` must be float32, got {lse.dtype}")
    checks.check_same_device({"q": q, "k": k, "lse": lse}, "q", OP)
    varlen.check_cu_seqlens(cu_seqlens, q.device, OP)
    return scale


def check_attention_importance_varlen_args(
    q, k, cu_seqlens, seqlens, scale=None, lse=None, read_cu_seqlens=True
) -> tuple[list[int], float]:
    """``(seqlens, scale)`` as plain Python values, or a ``TypeError``/``ValueError`` naming the
    argument. ``seqlens`` may be ``None`` only for a CPU ``cu_seqlens`` (read here)."""
    scale = check_tensors(q, k, cu_seqlens, scale, lse)
    sizes = varlen.resolve_seqlens(cu_seqlens, seqlens, q.shape[0], OP, read_cu_seqlens=read_cu_seqlens)
    return sizes, scale


def available_backends(device) -> list[str]:
    """The ``attention_importance_varlen`` backends that run on ``device``, fastest first."""
    return BACKENDS.available(device)


def attention_importance_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float | None = None,
    *,
    seqlens: list[int] | tuple[int, ...] | None = None,
    lse: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention each key receives within its segment, ``[T_total]`` float32.

    q, k: ``[T_total, H, hd]`` queries (unscaled; after any rotary embedding) and keys of one layer,
    float32, float16 or bfloat16, one dtype, one device. cu_seqlens: ``[n + 1]`` int32/int64
    segment offsets, on the CPU or that device. seqlens: the ``n`` segment sizes as host ints;
    **the sizes must be known on the host**: pass ``seqlens``, or a ``cu_seqlens`` on the CPU (it
    is then read); a GPU ``cu_seqlens`` without ``seqlens`` is refused. scale: the softmax scale,
    ``hd ** -0.5`` when ``None``. lse: optional ``[H, T_total]`` float32 log-sum-exp of each query
    row of the scaled scores within its segment (FlashAttention's varlen ``softmax_lse`` layout),
    which saves recomputing the normaliser.

    Returns, for key ``j``, ``sum`` over its segment's queries of their softmax attention to ``j``,
    ``mean`` over heads: the published Qwen2.5-VL statistic before pooling (a segment's values sum
    to its size ``T_i``). backend: ``"auto"``, ``"blockwise"``, ``"triton"`` or ``"reference"``.
    """
    sizes, scale = check_attention_importance_varlen_args(q, k, cu_seqlens, seqlens, scale, lse)
    chosen = BACKENDS.resolve(backend, q.device)
    return chosen.run(q, k, cu_seqlens, sizes, scale, lse=lse)


def attention_importance_varlen_fake(q, k, cu_seqlens, seqlens, scale=None, *, lse=None):
    """The output's shape and dtype, ``[T_total]`` float32, for ``torch.compile``."""
    check_attention_importance_varlen_args(q, k, cu_seqlens, seqlens, scale, lse, read_cu_seqlens=False)
    return q.new_empty(q.shape[0], dtype=torch.float32)


def _attention_importance_varlen_auto(q, k, cu_seqlens, seqlens, scale=None, *, lse=None):
    return attention_importance_varlen(q, k, cu_seqlens, scale, seqlens=seqlens, lse=lse, backend="auto")


BACKENDS.register(attention_importance_varlen_fake, _attention_importance_varlen_auto)
