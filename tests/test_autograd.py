"""zip_tokens is differentiable with respect to ``hidden`` on every backend, as the reference is.

The reference is checked by ``gradcheck`` in float64 (called directly: the op accepts float32,
float16 and bfloat16 only); every other backend's gradient is compared with the reference's on
the same inputs and upstream gradient. ``attn`` and ``keys`` get no gradient: they only decide
indices.
"""
import sys

import pytest
import torch
from zip_cases import DTYPES, ZipCase, make_inputs

import visionzip_kernels as vz
from visionzip_kernels.ops.zip_tokens import reference

CASES = [
    ZipCase(2, 33, 12, 3, 8, 6, 4),
    ZipCase(1, 40, 10, 2, 6, 5, 7, has_cls=False, attn_layout="full", key_layout="heads"),
    ZipCase(3, 21, 9, 2, 4, 4, 3, attn_layout="scores", key_layout="none"),
    ZipCase(2, 25, 8, 2, 4, 7, 0),
]
ARG_NAMES = ("hidden", "attn", "k_dom", "k_ctx", "keys", "has_cls")


def hidden_grad(inputs: dict, upstream: torch.Tensor, backend: str) -> torch.Tensor:
    hidden = inputs["hidden"].detach().clone().requires_grad_()
    tokens, _ = vz.zip_tokens(**{**inputs, "hidden": hidden}, backend=backend)
    tokens.backward(upstream)
    return hidden.grad


@pytest.mark.parametrize("case", CASES, ids=str)
def test_reference_passes_gradcheck_in_float64(case):
    """The reference's apply step, accumulated in float64, against finite differences."""
    inputs = make_inputs(case, torch.float32, seed=1)
    metric = reference.merge_metric(inputs["hidden"], inputs["keys"])
    plan = reference.plan_zip(inputs["attn"], metric, case.k_dom, case.k_ctx, case.has_cls)
    hidden = inputs["hidden"].double().requires_grad_()
    assert torch.autograd.gradcheck(lambda h: reference.apply_zip(h, plan, accum_dtype=torch.float64), (hidden,))


@pytest.mark.parametrize("backend", vz.available_backends("cpu"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_every_backend_has_the_reference_gradient(case, dtype, backend):
    inputs = make_inputs(case, dtype, seed=2)
    upstream = torch.randn(case.batch, case.k_dom + case.k_ctx, case.width, generator=torch.Generator().manual_seed(3))
    upstream = upstream.to(dtype)
    expected = hidden_grad(inputs, upstream, "reference")
    got = hidden_grad(inputs, upstream, backend)
    assert got.dtype == dtype and got.shape == inputs["hidden"].shape
    # float32 sums of at most a few rows and one division by the group size, rounded once.
    tolerance = {"atol": 1e-6, "rtol": 1e-6} if dtype == torch.float32 else {"atol": 0.0, "rtol": 2 * torch.finfo(dtype).eps}
    torch.testing.assert_close(got, expected, **tolerance)


def test_gradient_reaches_every_kept_and_merged_token_and_no_other():
    case = ZipCase(1, 30, 6, 2, 4, 6, 3, key_layout="heads")
    inputs = make_inputs(case, torch.float32, seed=4)
    grad = hidden_grad(inputs, torch.ones(1, 9, 6), "cpu")
    plan = reference.plan_zip(inputs["attn"], reference.merge_metric(inputs["hidden"], inputs["keys"]), 6, 3, True)
    counts = torch.bincount(plan.merge_assign[0], minlength=3).clamp(min=1).float()
    expected = torch.zeros(30, 6)
    expected[plan.dominant_idx[0]] = 1.0
    expected[plan.target_idx[0]] = 1.0
    expected[plan.merge_idx[0]] = (1.0 / counts[plan.merge_assign[0]])[:, None].expand(-1, 6)
    torch.testing.assert_close(grad[0], expected)


def test_attn_and_keys_get_no_gradient():
    inputs = make_inputs(CASES[0], torch.float32, seed=5)
    attn = inputs["attn"].requires_grad_()
    keys = inputs["keys"].requires_grad_()
    hidden = inputs["hidden"].requires_grad_()
    tokens, _ = torch.ops.visionzip.zip_tokens(hidden, attn, 6, 4, keys, True)
    tokens.sum().backward()
    assert hidden.grad is not None and attn.grad is None and keys.grad is None


@pytest.mark.parametrize("op_name", ["zip_tokens", "_zip_tokens_cpu"])
def test_opcheck_with_requires_grad(op_name):
    inputs = make_inputs(CASES[1], torch.float32, seed=6)
    inputs["hidden"].requires_grad_()
    torch.library.opcheck(getattr(torch.ops.visionzip, op_name), tuple(inputs[name] for name in ARG_NAMES))


def python_functions_called(fn) -> set[str]:
    """``file:function`` of every Python function that runs during ``fn()``."""
    called = set()

    def profile(frame, event, arg):
        if event == "call":
            called.add(f"{frame.f_code.co_filename}:{frame.f_code.co_name}")

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return called


@pytest.mark.parametrize("op_name", ["zip_tokens", "_zip_tokens_cpu"])
def test_a_call_without_gradients_runs_no_python_autograd(op_name):
    """The autograd formula is C++ (csrc/zip_tokens_autograd.cpp): a call that needs no gradient
    goes straight to the kernel, with no Python autograd wrapper and no graph node."""
    inputs = make_inputs(CASES[0], torch.float32, seed=7)
    op = getattr(torch.ops.visionzip, op_name)
    op(*(inputs[name] for name in ARG_NAMES))  # first call: the backend choice and its imports
    called = python_functions_called(lambda: op(*(inputs[name] for name in ARG_NAMES)))
    assert not [name for name in called if "_library/autograd.py" in name], sorted(called)
    inputs["hidden"].requires_grad_()
    with torch.no_grad():
        tokens, _ = op(*(inputs[name] for name in ARG_NAMES))
    assert tokens.grad_fn is None and not tokens.requires_grad
    tokens, dominant_idx = op(*(inputs[name] for name in ARG_NAMES))
    assert tokens.grad_fn is not None and not dominant_idx.requires_grad
