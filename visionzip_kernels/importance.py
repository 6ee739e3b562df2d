"""The public ``attention_importance`` op: validation, kernels, backend choice.

What ``zip_tokens`` needs from the penultimate layer's attention, without its ``N x N`` map, so that
the encoder keeps SDPA/FlashAttention: for queries and keys ``[B, H, N, hd]`` and the layer's
softmax scale, the importance ``[B, H, N]`` float32 of every key, either the CLS query's softmax
row (``has_cls=True``) or the mean over all queries of the softmax columns (``has_cls=False``).
``attention_reference.py`` is the definition.

``attention_importance(..., backend=...)`` validates its arguments once, here, then runs one backend:

- ``"reference"``: eager softmax (``attention_reference.py``), any device; materialises the
  ``[B, H, N, N]`` probabilities without a CLS token;
- ``"cpu"``: PyTorch over blocks of query rows (``attention_blockwise.py``), CPU tensors, never an
  ``N x N`` buffer once ``N > 64``;
- ``"triton"``: two flash-style Triton passes (``triton/attention_importance.py``), CUDA tensors,
  or CPU tensors through Triton's interpreter when ``TRITON_INTERPRET=1`` is set;
- ``"auto"``: the first of ``attention_backends(device)``: ``"cpu"`` on CPU, ``"triton"`` on CUDA.

Accuracy: every backend computes the scores, exponentials and sums in float32 (float16 and
bfloat16 products are exact in float32; the Triton kernels take float32 products in IEEE float32,
never TF32), so all three input dtypes agree with a float64 evaluation on the same inputs to
float32 rounding (the tests hold them to ``rtol = 2e-5``). A NaN or infinite query or key that
enters the softmax makes that head's importance NaN, which ``zip_tokens`` ranks last.

``torch.ops.visionzip.attention_importance`` is the same op with the automatic choice; its CPU and
CUDA kernels and its fake kernel (the output shape, for ``torch.compile``) are registered here.
"""
from __future__ import annotations

import math
import numbers

import torch

from . import _native  # noqa: F401  (loads the op schema)
from .attention_blockwise import attention_importance_blockwise
from .attention_reference import attention_importance as attention_importance_reference
from .ops import FLOAT_DTYPES, triton_importable, triton_interpreter_on

BACKENDS = ("auto", "reference", "cpu", "triton")


def _check_qk(tensor, name: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(
            f"attention_importance: `{name}` must be a torch.Tensor, got {type(tensor).__name__}"
        )
    if tensor.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"attention_importance: `{name}` must be float32, float16 or bfloat16, got {tensor.dtype}"
        )
    if tensor.dim() != 4:
        raise ValueError(
            f"attention_importance: `{name}` must be [B, H, N, hd], got shape {tuple(tensor.shape)}"
        )
    if tensor.numel() == 0:
        raise ValueError(
            f"attention_importance: `{name}` must not be empty, got shape {tuple(tensor.shape)}"
        )


def check_attention_importance_args(q, k, has_cls=True, scale=None, lse=None) -> None:
    """Raise ``TypeError``/``ValueError`` naming the argument for any input the op rejects."""
    _check_qk(q, "q")
    _check_qk(k, "k")
    if k.shape != q.shape:
        raise ValueError(
            f"attention_importance: `k` must have the shape of `q` {tuple(q.shape)}, "
            f"got {tuple(k.shape)}"
        )
    if k.dtype != q.dtype:
        raise ValueError(f"attention_importance: `k` must have the dtype of `q` ({q.dtype}), got {k.dtype}")
    if k.device != q.device:
        raise ValueError(
            f"attention_importance: `k` is on {k.device} but `q` is on {q.device}; "
            "all tensors must be on one device"
        )
    if not isinstance(has_cls, bool):
        raise TypeError(f"attention_importance: `has_cls` must be a bool, got {type(has_cls).__name__}")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise TypeError(
                f"attention_importance: `scale` must be a float or None, got {type(scale).__name__}"
            )
        if not math.isfinite(scale):
            raise ValueError(f"attention_importance: `scale` must be finite, got {scale}")
    if lse is None:
        return
    if not isinstance(lse, torch.Tensor):
        raise TypeError(
            f"attention_importance: `lse` must be a torch.Tensor or None, got {type(lse).__name__}"
        )
    if lse.shape != q.shape[:3]:
        raise ValueError(
            f"attention_importance: `lse` must be [B, H, N] = {tuple(q.shape[:3])} like `q`, "
            f"got shape {tuple(lse.shape)}"
        )
    if lse.dtype != torch.float32:
        raise ValueError(f"attention_importance: `lse` must be float32, got {lse.dtype}")
    if lse.device != q.device:
        raise ValueError(
            f"attention_importance: `lse` is on {lse.device} but `q` is on {q.device}; "
            "all tensors must be on one device"
        )


def attention_backends(device) -> list[str]:
    """The backends that can run on ``device`` (a ``torch.device`` or a string), fastest first."""
    device = torch.device(device)
    if device.type == "cpu":
        interpreted = ["triton"] if triton_importable() and triton_interpreter_on() else []
        return ["cpu", *interpreted, "reference"]
    if device.type == "cuda" and triton_importable() and not triton_interpreter_on():
        return ["triton", "reference"]
    return ["reference"]


def _require_backend(backend: str, device: torch.device) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"attention_importance: `backend` must be one of {BACKENDS}, got {backend!r}")
    if backend in attention_backends(device):
        return
    if backend == "triton" and not triton_importable():
        reason = "the `triton` package is not installed"
    elif backend == "triton" and device.type == "cpu":
        reason = (
            "Triton runs CPU tensors only through its interpreter: set TRITON_INTERPRET=1 before "
            "importing visionzip_kernels"
        )
    elif backend == "triton" and device.type == "cuda":
        reason = "TRITON_INTERPRET=1 is set, so Triton cannot compile for the GPU"
    else:
        reason = f"it does not run on {device.type} tensors"
    raise ValueError(f"attention_importance: backend={backend!r} is not available on {device}: {reason}")


def _run_backend(backend: str, q, k, has_cls: bool, scale: float, lse):
    if backend == "reference":
        return attention_importance_reference(q, k, has_cls, scale, lse)
    if backend == "cpu":
        return attention_importance_blockwise(q, k, has_cls, scale, lse)
    from .triton.attention_importance import attention_importance_triton

    return attention_importance_triton(q, k, has_cls, scale, lse)


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
    backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"`` (see the module docstring).
    """
    check_attention_importance_args(q, k, has_cls, scale, lse)
    if backend == "auto":
        backend = attention_backends(q.device)[0]
    else:
        _require_backend(backend, q.device)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return _run_backend(backend, q, k, has_cls, scale, lse)


def attention_importance_fake(q, k, has_cls=True, scale=None, *, lse=None):
    """The output's shape and dtype, ``[B, H, N]`` float32, for ``torch.compile``."""
    check_attention_importance_args(q, k, has_cls, scale, lse)
    return q.new_empty(q.shape[:3], dtype=torch.float32)


def _attention_importance_auto(q, k, has_cls=True, scale=None, *, lse=None):
    return attention_importance(q, k, has_cls, scale, lse=lse, backend="auto")


torch.library.register_fake("visionzip::attention_importance")(attention_importance_fake)
torch.library.register_kernel("visionzip::attention_importance", ("cpu", "cuda"))(
    _attention_importance_auto
)
