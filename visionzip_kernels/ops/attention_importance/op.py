"""``attention_importance``: the public function, its validation, its backends and their registration.

What ``zip_tokens`` needs from the penultimate layer's attention, without its ``N x N`` map, so that
the encoder keeps SDPA/FlashAttention: for queries and keys ``[B, H, N, hd]`` and the layer's
softmax scale, the importance ``[B, H, N]`` float32 of every key, either the CLS query's softmax
row (``has_cls=True``) or the mean over all queries of the softmax columns (``has_cls=False``).
``reference.py`` is the definition.

``attention_importance(..., backend=...)`` validates its arguments once, here, then runs one backend:

- ``"reference"``: eager softmax (``reference.py``), any device; materialises the ``[B, H, N, N]``
  probabilities without a CLS token;
- ``"blockwise"``: PyTorch over blocks of query rows (``blockwise.py``), any device, never an
  ``N x N`` buffer once ``N > 64``;
- ``"cuda"``: CUDA C++ kernels (``csrc/attention_importance_cuda.cu``), CUDA tensors, where the
  extension ``visionzip_kernels._C_cuda`` was built: one kernel for the CLS row, and without a CLS
  token a row pass (skipped with ``lse``) and a column pass, on tensor cores (float16/bfloat16,
  ``hd <= 128``) or on CUDA cores (float32, or larger ``hd``);
- ``"triton"``: two flash-style Triton passes (``triton.py``), CUDA tensors, or CPU tensors through
  Triton's interpreter when ``TRITON_INTERPRET=1`` is set;
- ``"auto"``: the first of ``available_backends(device)``: ``"blockwise"`` on CPU; on CUDA,
  ``"cuda"`` where the extension is built, else ``"triton"``. No GPU has timed ``"cuda"`` yet: it
  comes first on the evidence of ``zip_tokens``, whose CUDA C++ backend measured faster than its
  Triton backend at every batch on an H200 (rows of 2026-11-27, ``zip_tokens_nvidia-h200.csv``;
  B=1 bf16: 41.8 vs 49.1 us as a CUDA graph, 44.6 vs 171 us eager) with the same launch pattern
  (one or two kernels launched from C++), and must be confirmed for this op by the rows of
  ``benchmarks/bench_attention_importance_op.py``.

Accuracy: every backend computes the scores, exponentials and sums in float32 (float16 and
bfloat16 products are exact in float32; the Triton and CUDA kernels take float32 products in IEEE
float32, never TF32), so all three input dtypes agree with a float64 evaluation on the same inputs to
float32 rounding (the tests hold them to ``rtol = 2e-5``). A NaN or infinite query or key that
enters the softmax makes that head's importance NaN, which ``zip_tokens`` ranks last.

``torch.ops.visionzip.attention_importance`` is the same op with the automatic choice.
"""
from __future__ import annotations

import torch

from ... import checks
from ...backends import OpBackends, on_any_device, on_cuda_extension, on_triton_device
from .blockwise import attention_importance_blockwise
from .reference import attention_importance as attention_importance_reference

OP = "attention_importance"

BACKENDS = OpBackends(
    OP,
    preference={
        "cpu": ("blockwise", "triton", "reference"),
        "cuda": ("cuda", "triton", "blockwise", "reference"),
    },
)
BACKENDS.add("blockwise", on_any_device, attention_importance_blockwise)
BACKENDS.add_op("cuda", on_cuda_extension, "_attention_importance_cuda")
BACKENDS.add_python_kernel(
    "triton",
    on_triton_device,
    "_attention_importance_triton",
    "visionzip_kernels.ops.attention_importance.triton",
    "attention_importance_triton",
)
BACKENDS.add("reference", on_any_device, attention_importance_reference)


QK_LAYOUTS = {4: "[B, H, N, hd]"}
QK_DIMS = {0: "B", 1: "H", 2: "N", 3: "hd"}


def check_attention_importance_args(q, k, has_cls=True, scale=None, lse=None) -> tuple[bool, float]:
    """``(has_cls, scale)`` as plain Python values (``scale`` resolved to ``hd ** -0.5`` when
    ``None``), or a ``TypeError``/``ValueError`` naming the argument for any input the op rejects.
    Reads shapes, dtypes and devices only."""
    checks.check_float_tensor(q, "q", OP, QK_LAYOUTS)
    checks.check_nonempty_dims(q, "q", OP, QK_DIMS)
    checks.check_float_tensor(k, "k", OP, QK_LAYOUTS)
    checks.check_nonempty_dims(k, "k", OP, QK_DIMS)
    q_shape, k_shape = q.shape, k.shape
    if k_shape != q_shape:
        raise ValueError(f"{OP}: `k` must have the shape of `q` {tuple(q_shape)}, got {tuple(k_shape)}")
    if k.dtype != q.dtype:
        raise ValueError(f"{OP}: `k` must have the dtype of `q` ({q.dtype}), got {k.dtype}")
    has_cls = checks.check_bool(has_cls, "has_cls", OP)
    scale = checks.check_optional_float(scale, "scale", OP)
    scale = q_shape[-1] ** -0.5 if scale is None else scale
    if lse is not None:
        if not isinstance(lse, torch.Tensor):
            raise TypeError(f"{OP}: `lse` must be a torch.Tensor or None, got {type(lse).__name__}")
        if lse.shape != q_shape[:3]:
            raise ValueError(
                f"{OP}: `lse` must be [B, H, N] = {tuple(q_shape[:3])} like `q`, got shape {tuple(lse.shape)}"
            )
        if lse.dtype != torch.float32:
            raise ValueError(f"{OP}: `lse` must be float32, got {lse.dtype}")
    checks.check_same_device({"q": q, "k": k, "lse": lse}, "q", OP)
    return has_cls, scale


def available_backends(device) -> list[str]:
    """The ``attention_importance`` backends that run on ``device``, fastest first."""
    return BACKENDS.available(device)


def attention_importance(
    q: torch.Tensor,
    k: torch.Tensor,
    has_cls: bool = True,
    scale: float | None = None,
    *,
    lse: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention each key receives, ``[B, H, N]`` float32, without the ``N x N`` map.

    q, k: ``[B, H, N, hd]`` queries (unscaled) and keys of one layer, float32, float16 or bfloat16,
    one dtype, one device. has_cls: token 0 is a CLS token; the result is then the CLS query's
    softmax row, otherwise the mean over queries of each softmax column. scale: the softmax scale,
    ``hd ** -0.5`` when ``None``. lse: optional ``[B, H, N]`` float32 log-sum-exp of each query row
    of the scaled scores (as attention kernels return it), which saves the first pass.
    backend: ``"auto"``, ``"reference"``, ``"blockwise"``, ``"cuda"`` or ``"triton"`` (see the module
    docstring).
    """
    has_cls, scale = check_attention_importance_args(q, k, has_cls, scale, lse)
    chosen = BACKENDS.resolve(backend, q.device)
    return chosen.run(q, k, has_cls, scale, lse=lse)


def attention_importance_fake(q, k, has_cls=True, scale=None, *, lse=None):
    """The output's shape and dtype, ``[B, H, N]`` float32, for ``torch.compile``."""
    check_attention_importance_args(q, k, has_cls, scale, lse)
    return q.new_empty(q.shape[:3], dtype=torch.float32)


def _attention_importance_auto(q, k, has_cls=True, scale=None, *, lse=None):
    return attention_importance(q, k, has_cls, scale, lse=lse, backend="auto")


BACKENDS.register(attention_importance_fake, _attention_importance_auto)
