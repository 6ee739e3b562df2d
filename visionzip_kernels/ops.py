"""The public ``zip_tokens`` op: argument validation, fake kernel, backend choice.

``zip_tokens(..., backend=...)`` validates its arguments once, here, then runs one backend:

- ``"reference"``: the PyTorch reference (``reference.py``), any device;
- ``"cpu"``: the C++ CPU kernel (``csrc/zip_tokens_cpu.cpp``), CPU tensors;
- ``"triton"``: the fused Triton kernels, CUDA tensors, or CPU tensors through Triton's
  interpreter when ``TRITON_INTERPRET=1`` is set;
- ``"cuda"``: the CUDA C++ kernels (``csrc/*.cu``), CUDA tensors, when that extension was built;
- ``"auto"``: the fastest available for the tensors' device (``choose_backend``).

``torch.ops.visionzip.zip_tokens`` is the same op with the automatic choice; its fake kernel gives
the output shapes to ``torch.compile``.
"""
from __future__ import annotations

import importlib.util
import operator
import os

import torch

from . import _native, reference

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BACKENDS = ("auto", "reference", "cpu", "triton", "cuda")


def as_int(value, name: str, caller: str = "zip_tokens") -> int:
    """``value`` as an int (any integer type but bool), or a ``TypeError`` naming ``caller``'s argument."""
    if isinstance(value, bool):
        raise TypeError(f"{caller}: `{name}` must be an int, got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{caller}: `{name}` must be an int, got {type(value).__name__}") from None


def _check_tensor(tensor, name: str, ranks: dict[int, str]) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"zip_tokens: `{name}` must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"zip_tokens: `{name}` must be float32, float16 or bfloat16, got {tensor.dtype}"
        )
    if tensor.dim() not in ranks:
        layouts = " or ".join(ranks.values())
        raise ValueError(f"zip_tokens: `{name}` must be {layouts}, got shape {tuple(tensor.shape)}")


def check_zip_tokens_args(hidden, attn, k_dom, k_ctx, keys=None, has_cls=True) -> None:
    """Raise ``TypeError``/``ValueError`` naming the argument for any input the contract rejects."""
    _check_tensor(hidden, "hidden", {3: "[B, N, D]"})
    _check_tensor(attn, "attn", {4: "[B, H, N, N]", 3: "[B, H, N]", 2: "[B, N]"})
    if keys is not None:
        _check_tensor(keys, "keys", {3: "[B, N, Dk]", 4: "[B, H, N, hd]"})
    if not isinstance(has_cls, bool):
        raise TypeError(f"zip_tokens: `has_cls` must be a bool, got {type(has_cls).__name__}")
    k_dom = as_int(k_dom, "k_dom")
    k_ctx = as_int(k_ctx, "k_ctx")

    batch, n_tokens, _ = hidden.shape
    attn_tokens = attn.shape[-1]
    if attn.shape[0] != batch or attn_tokens != n_tokens:
        raise ValueError(
            f"zip_tokens: `attn` must have B={batch} and N={n_tokens} like `hidden` "
            f"{tuple(hidden.shape)}, got shape {tuple(attn.shape)}"
        )
    if attn.dim() == 4 and attn.shape[2] != n_tokens:
        raise ValueError(
            f"zip_tokens: a full `attn` map must be [B, H, N, N] with N={n_tokens}, "
            f"got shape {tuple(attn.shape)}"
        )
    if keys is not None and (keys.shape[0] != batch or keys.shape[-2] != n_tokens):
        raise ValueError(
            f"zip_tokens: `keys` must have B={batch} and N={n_tokens} like `hidden` "
            f"{tuple(hidden.shape)}, got shape {tuple(keys.shape)}"
        )
    for name, tensor in (("attn", attn), ("keys", keys)):
        if tensor is not None and tensor.device != hidden.device:
            raise ValueError(
                f"zip_tokens: `{name}` is on {tensor.device} but `hidden` is on {hidden.device}; "
                "all tensors must be on one device"
            )

    if k_dom < 1:
        counted = " (it counts the CLS token, so 1 keeps the CLS token alone)" if has_cls else ""
        raise ValueError(f"zip_tokens: `k_dom` must be >= 1{counted}, got {k_dom}")
    if k_ctx < 0:
        raise ValueError(f"zip_tokens: `k_ctx` must be >= 0, got {k_ctx}")
    if k_dom + k_ctx > n_tokens:
        raise ValueError(
            f"zip_tokens: `k_dom` + `k_ctx` must be <= N={n_tokens} tokens, "
            f"got {k_dom} + {k_ctx} = {k_dom + k_ctx}"
        )


def triton_importable() -> bool:
    """Whether the ``triton`` package can be imported."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreter_on() -> bool:
    """Whether Triton kernels run through the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available_backends(device) -> list[str]:
    """The backends that can run on ``device`` (a ``torch.device`` or a string), fastest first."""
    device = torch.device(device)
    if device.type == "cpu":
        interpreted = ["triton"] if triton_importable() and triton_interpreter_on() else []
        return ["cpu", *interpreted, "reference"]
    if device.type == "cuda":
        compiled = ["triton"] if triton_importable() and not triton_interpreter_on() else []
        native = ["cuda"] if _native.CUDA_EXTENSION_BUILT else []
        return [*compiled, *native, "reference"]
    return ["reference"]


def choose_backend(hidden: torch.Tensor) -> str:
    """The ``"auto"`` choice for these inputs: the first of ``available_backends``."""
    return available_backends(hidden.device)[0]


def _require_backend(backend: str, device: torch.device) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"zip_tokens: `backend` must be one of {BACKENDS}, got {backend!r}")
    if backend in available_backends(device):
        return
    if backend == "triton" and device.type == "cpu":
        reason = (
            "Triton runs CPU tensors only through its interpreter: set TRITON_INTERPRET=1 before "
            "importing visionzip_kernels"
            if triton_importable()
            else "the `triton` package is not installed"
        )
    elif backend == "triton":
        reason = (
            "TRITON_INTERPRET=1 is set, so Triton cannot compile for the GPU"
            if triton_importable()
            else "the `triton` package is not installed"
        )
    elif backend == "cuda" and device.type == "cuda":
        reason = "the CUDA extension visionzip_kernels._C_cuda was not built (see README: Install)"
    else:
        reason = f"it does not run on {device.type} tensors"
    raise ValueError(f"zip_tokens: backend={backend!r} is not available on {device}: {reason}")


def _run_backend(backend: str, hidden, attn, k_dom, k_ctx, keys, has_cls):
    if backend == "reference":
        return reference.zip_tokens(hidden, attn, k_dom, k_ctx, keys, has_cls)
    if backend == "cpu":
        return torch.ops.visionzip._zip_tokens_cpu(hidden, attn, k_dom, k_ctx, keys, has_cls)
    if backend == "cuda":
        return torch.ops.visionzip._zip_tokens_cuda(hidden, attn, k_dom, k_ctx, keys, has_cls)
    from .triton.zip_tokens import zip_tokens_triton

    return zip_tokens_triton(hidden, attn, k_dom, k_ctx, keys, has_cls)


def zip_tokens(
    hidden: torch.Tensor,
    attn: torch.Tensor,
    k_dom: int,
    k_ctx: int,
    keys: torch.Tensor | None = None,
    has_cls: bool = True,
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionZip's dominant and contextual tokens (``docs/CONTRACT.md``).

    hidden: ``[B, N, D]``; attn: ``[B, H, N, N]``, ``[B, H, N]`` or ``[B, N]``; keys: ``None``,
    ``[B, N, Dk]`` or ``[B, H, N, hd]``; float32, float16 or bfloat16, on one device.
    Returns ``tokens`` ``[B, k_dom + k_ctx, D]`` in ``hidden``'s dtype and ``dominant_idx``
    ``[B, k_dom]`` int64 (ascending).
    """
    check_zip_tokens_args(hidden, attn, k_dom, k_ctx, keys, has_cls)
    if backend == "auto":
        backend = choose_backend(hidden)
    else:
        _require_backend(backend, hidden.device)
    return _run_backend(backend, hidden, attn, int(k_dom), int(k_ctx), keys, has_cls)


def _zip_tokens_fake(hidden, attn, k_dom, k_ctx, keys=None, has_cls=True):
    check_zip_tokens_args(hidden, attn, k_dom, k_ctx, keys, has_cls)
    batch, _, width = hidden.shape
    tokens = hidden.new_empty(batch, k_dom + k_ctx, width)
    return tokens, hidden.new_empty(batch, k_dom, dtype=torch.int64)


def _zip_tokens_auto(hidden, attn, k_dom, k_ctx, keys=None, has_cls=True):
    return zip_tokens(hidden, attn, k_dom, k_ctx, keys, has_cls, backend="auto")


for _op in ("visionzip::zip_tokens", "visionzip::_zip_tokens_cpu", "visionzip::_zip_tokens_cuda"):
    torch.library.register_fake(_op)(_zip_tokens_fake)
torch.library.register_kernel("visionzip::zip_tokens", ("cpu", "cuda"))(_zip_tokens_auto)
