"""``zip_tokens``: the public function, its validation, its backends and their registration.

``zip_tokens(..., backend=...)`` validates its arguments once, here, then runs one backend:

- ``"reference"``: the contract in PyTorch (``reference.py``), any device;
- ``"cpu"``: the C++ CPU kernel (``csrc/zip_tokens_cpu.cpp``), CPU tensors;
- ``"triton"``: three or four Triton launches, column sums (a full map without CLS only), select,
  assign and apply (``triton.py``, ``triton_kernels.py``), CUDA tensors, or CPU tensors through
  Triton's interpreter when ``TRITON_INTERPRET=1`` is set;
- ``"cuda"``: the CUDA C++ kernels (``csrc/zip_tokens_cuda.cu``), CUDA tensors, when that
  extension was built;
- ``"auto"``: the first of ``available_backends(device)``.

``auto`` prefers, on CUDA, the CUDA C++ backend over Triton: on an H200 (bf16, CLIP-L/336, 54 + 10,
CUDA-graph replay; ``benchmarks/results/zip_tokens_nvidia-h200.csv``) it took 41.8 us against
49.1 us at B=1 and 0.219 ms against 0.406 ms at B=256, and was faster at every batch measured.
Those rows are of the kernels before both backends spread an image over many blocks; the order
stands until ``benchmarks/gpu_check.sh`` measures the redesigned ones.

``torch.ops.visionzip.zip_tokens`` is the same op with the automatic choice; its fake kernel gives
the output shapes to ``torch.compile``. Every backend is differentiable with respect to ``hidden``
(``autograd.py`` and ``csrc/zip_tokens_autograd.cpp``; the reference through PyTorch's own
autograd).
"""
from __future__ import annotations

import torch

from ... import checks
from ...backends import OpBackends, on_any_device, on_cpu, on_cuda_extension, on_triton_device
from . import autograd, reference  # noqa: F401  (autograd: registers the gradient kernel)

OP = "zip_tokens"

BACKENDS = OpBackends(
    OP,
    preference={"cpu": ("cpu", "triton", "reference"), "cuda": ("cuda", "triton", "reference")},
)
BACKENDS.add_op("cpu", on_cpu, "_zip_tokens_cpu")
BACKENDS.add_python_kernel(
    "triton", on_triton_device, "_zip_tokens_triton", "visionzip_kernels.ops.zip_tokens.triton", "zip_tokens_triton"
)
BACKENDS.add_op("cuda", on_cuda_extension, "_zip_tokens_cuda")
BACKENDS.add("reference", on_any_device, reference.zip_tokens)


HIDDEN_LAYOUTS = {3: "[B, N, D]"}
ATTN_LAYOUTS = {4: "[B, H, N, N]", 3: "[B, H, N]", 2: "[B, N]"}
KEY_LAYOUTS = {3: "[B, N, Dk]", 4: "[B, H, N, hd]"}
HIDDEN_DIMS = {2: "D"}
ATTN_DIMS = {1: "H"}
KEY_DIMS = {3: {-1: "Dk"}, 4: {-1: "Dk", 1: "H"}}


def check_zip_tokens_args(hidden, attn, k_dom, k_ctx, keys=None, has_cls=True) -> tuple[int, int, bool]:
    """``(k_dom, k_ctx, has_cls)`` as plain Python values, or a ``TypeError``/``ValueError`` naming
    the argument for any input the contract rejects. Reads shapes, dtypes and devices only."""
    checks.check_float_tensor(hidden, "hidden", OP, HIDDEN_LAYOUTS)
    checks.check_float_tensor(attn, "attn", OP, ATTN_LAYOUTS)
    if keys is not None:
        checks.check_float_tensor(keys, "keys", OP, KEY_LAYOUTS)
    has_cls = checks.check_bool(has_cls, "has_cls", OP)
    k_dom = checks.check_int(k_dom, "k_dom", OP)
    k_ctx = checks.check_int(k_ctx, "k_ctx", OP)

    batch, n_tokens, _ = hidden_shape = hidden.shape
    attn_shape = attn.shape
    if attn_shape[0] != batch or attn_shape[-1] != n_tokens:
        raise ValueError(
            f"{OP}: `attn` must have B={batch} and N={n_tokens} like `hidden` "
            f"{tuple(hidden_shape)}, got shape {tuple(attn_shape)}"
        )
    if len(attn_shape) == 4 and attn_shape[2] != n_tokens:
        raise ValueError(
            f"{OP}: a full `attn` map must be [B, H, N, N] with N={n_tokens}, got shape {tuple(attn_shape)}"
        )
    if keys is not None:
        keys_shape = keys.shape
        if keys_shape[0] != batch or keys_shape[-2] != n_tokens:
            raise ValueError(
                f"{OP}: `keys` must have B={batch} and N={n_tokens} like `hidden` "
                f"{tuple(hidden_shape)}, got shape {tuple(keys_shape)}"
            )
        checks.check_nonempty_dims(keys, "keys", OP, KEY_DIMS[len(keys_shape)])
    checks.check_nonempty_dims(hidden, "hidden", OP, HIDDEN_DIMS)
    if len(attn_shape) > 2:
        checks.check_nonempty_dims(attn, "attn", OP, ATTN_DIMS)
    checks.check_same_device({"hidden": hidden, "attn": attn, "keys": keys}, "hidden", OP)

    if k_dom < 1:
        counted = " (it counts the CLS token, so 1 keeps the CLS token alone)" if has_cls else ""
        raise ValueError(f"{OP}: `k_dom` must be >= 1{counted}, got {k_dom}")
    if k_ctx < 0:
        raise ValueError(f"{OP}: `k_ctx` must be >= 0, got {k_ctx}")
    if k_dom + k_ctx > n_tokens:
        raise ValueError(
            f"{OP}: `k_dom` + `k_ctx` must be <= N={n_tokens} tokens, got {k_dom} + {k_ctx} = {k_dom + k_ctx}"
        )
    return k_dom, k_ctx, has_cls


def available_backends(device) -> list[str]:
    """The ``zip_tokens`` backends that run on ``device`` (a ``torch.device`` or a string), fastest first."""
    return BACKENDS.available(device)


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
    k_dom, k_ctx, has_cls = check_zip_tokens_args(hidden, attn, k_dom, k_ctx, keys, has_cls)
    chosen = BACKENDS.resolve(backend, hidden.device)
    return chosen.run(hidden, attn, k_dom, k_ctx, keys, has_cls)


def zip_tokens_fake(hidden, attn, k_dom, k_ctx, keys=None, has_cls=True):
    """The outputs' shapes and dtypes, for ``torch.compile``."""
    k_dom, k_ctx, _ = check_zip_tokens_args(hidden, attn, k_dom, k_ctx, keys, has_cls)
    batch, _, width = hidden.shape
    tokens = hidden.new_empty(batch, k_dom + k_ctx, width)
    return tokens, hidden.new_empty(batch, k_dom, dtype=torch.int64)


def _zip_tokens_auto(hidden, attn, k_dom, k_ctx, keys=None, has_cls=True):
    return zip_tokens(hidden, attn, k_dom, k_ctx, keys, has_cls, backend="auto")


BACKENDS.register(zip_tokens_fake, _zip_tokens_auto)
