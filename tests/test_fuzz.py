"""Fuzzing zip_tokens with hypothesis, derandomised and bounded so that CI is stable and quick.

- Every CPU-runnable backend (``cpu``, ``reference``, ``triton`` under the interpreter on smaller
  shapes) against the reference on random shapes (B 0..3, N 1..40, D 1..48, H 1..4, head_dim
  1..16), layouts of ``attn`` and ``keys``, strided views (permuted storage, every other element,
  a broadcast batch), dtypes per tensor, budgets (k_dom 1..N, k_ctx 0..N-k_dom) and values with
  exact ties; the backend's inputs are left unchanged.
- The public entry points (``visionzip_kernels.zip_tokens``, ``torch.ops.visionzip.zip_tokens``) on
  random bad inputs: a named ``ValueError``/``TypeError`` (through ``torch.ops``, a Python value of
  the wrong type may instead meet the schema's ``RuntimeError``), and inputs unchanged.
- The C++ entry point ``torch.ops.visionzip._zip_tokens_cpu`` on the same bad inputs: the Python
  validation's error, type and message; in a child process, so that a crash fails the test.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import visionzip_kernels as vz
from zip_cases import ATTN_LAYOUTS, DTYPES, KEY_LAYOUTS, ZipCase, assert_matches_reference, make_inputs

FUZZ = settings(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
VIEWS = ("contiguous", "permuted", "every-other", "broadcast-batch")
BAD_DTYPES = (torch.float64, torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64)


def strided_view(tensor: torch.Tensor, view: str) -> torch.Tensor:
    """``tensor``'s values (``broadcast-batch``: image 0's, for every image) in a non-contiguous layout."""
    if view == "permuted":  # stored in reversed dimension order
        order = list(reversed(range(tensor.dim())))
        return tensor.permute(order).contiguous().permute(order)
    if view == "every-other":  # every other element of a wider last dimension
        wide = torch.zeros(*tensor.shape[:-1], 2 * tensor.shape[-1], dtype=tensor.dtype)
        wide[..., ::2] = tensor
        return wide[..., ::2]
    if view == "broadcast-batch" and tensor.shape[0] > 0:  # batch stride 0
        return tensor[:1].expand_as(tensor)
    return tensor


@st.composite
def zip_problems(draw, max_tokens=40, max_width=48, max_head_dim=16):
    """Valid zip_tokens arguments: (inputs for the backend, the same values contiguous)."""
    n_tokens = draw(st.integers(1, max_tokens))
    k_dom = draw(st.integers(1, n_tokens))
    case = ZipCase(
        batch=draw(st.integers(0, 3)),
        n_tokens=n_tokens,
        width=draw(st.integers(1, max_width)),
        heads=draw(st.integers(1, 4)),
        head_dim=draw(st.integers(1, max_head_dim)),
        k_dom=k_dom,
        k_ctx=draw(st.integers(0, n_tokens - k_dom)),
        has_cls=draw(st.booleans()),
        attn_layout=draw(st.sampled_from(ATTN_LAYOUTS)),
        key_layout=draw(st.sampled_from(KEY_LAYOUTS)),
    )
    inputs = make_inputs(case, torch.float32, seed=draw(st.integers(0, 2**31 - 1)))
    if draw(st.booleans()):  # quarter steps: exact ties in scores and similarities, zero keys
        inputs.update({k: (v * 4).round() / 4 for k, v in inputs.items() if isinstance(v, torch.Tensor)})
    dtype = draw(st.sampled_from(DTYPES))
    contiguous, strided = dict(inputs), dict(inputs)
    for name in ("hidden", "attn", "keys"):
        if inputs[name] is not None:
            own_dtype = dtype if name == "hidden" else draw(st.sampled_from((dtype, *DTYPES)))
            values = strided_view(inputs[name].to(own_dtype), draw(st.sampled_from(VIEWS)))
            contiguous[name], strided[name] = values.contiguous(), values
    return strided, contiguous


def check_backend(backend: str, problem) -> None:
    strided, contiguous = problem
    tensors = {k: v.clone() for k, v in strided.items() if isinstance(v, torch.Tensor)}
    tokens, dominant_idx = vz.zip_tokens(**strided, backend=backend)
    assert_matches_reference(tokens, dominant_idx, contiguous)
    for name, original in tensors.items():
        assert torch.equal(strided[name], original), f"`{name}` changed"


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@settings(FUZZ, max_examples=120)
@given(problem=zip_problems())
def test_backend_matches_reference_on_random_problems(backend, problem):
    check_backend(backend, problem)


@settings(FUZZ, max_examples=12)
@given(problem=zip_problems(max_tokens=24, max_width=20, max_head_dim=8))
def test_triton_matches_reference_on_random_problems(problem):
    check_backend("triton", problem)


# Bad inputs: a valid small problem with one fault of a given kind. "type" faults are Python values
# of the wrong type, which torch.ops' schema may reject before any kernel runs.
TENSOR_FAULTS = ("rank", "dtype", "budget", "size", "empty", "device")
FAULTS = (*TENSOR_FAULTS, "type")


@st.composite
def bad_inputs(draw, fault: str):
    """zip_tokens' keyword arguments with one fault of kind ``fault``."""
    b, n, d, h, hd = (draw(st.integers(low, 4)) for low in (0, 1, 1, 1, 1))
    k_dom = draw(st.integers(1, n))
    keys_shape = draw(st.sampled_from([None, (b, n, hd), (b, h, n, hd)]))
    shapes = {"hidden": (b, n, d), "attn": draw(st.sampled_from([(b, n), (b, h, n), (b, h, n, n)])), "keys": keys_shape}
    dtypes = {"hidden": torch.float32, "attn": torch.float32, "keys": torch.float32}
    devices = {"hidden": "cpu", "attn": "cpu", "keys": "cpu"}
    scalars = {"k_dom": k_dom, "k_ctx": draw(st.integers(0, n - k_dom)), "has_cls": draw(st.booleans())}
    if fault in ("rank", "dtype", "device"):
        name = draw(st.sampled_from(["hidden", "attn", "keys"] if fault != "device" else ["attn", "keys"]))
        if fault == "rank":
            bad_ranks = {"hidden": [0, 1, 2, 4, 5], "attn": [0, 1, 5], "keys": [0, 1, 2, 5]}[name]
            rank = draw(st.sampled_from(bad_ranks))
            shapes[name] = tuple(draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank)))
        else:
            shapes[name] = shapes[name] or (b, n, hd)
            if fault == "dtype":
                dtypes[name] = draw(st.sampled_from(BAD_DTYPES))
            else:
                devices[name] = "meta"
    elif fault == "budget":  # k_dom < 1, k_ctx < 0 or k_dom + k_ctx > N, anywhere in int64
        name, low, high = draw(st.sampled_from([
            ("k_dom", -(2**63), 0), ("k_ctx", -(2**63), -1), ("k_ctx", n - k_dom + 1, 2**63 - 1), ("k_dom", n + 1, 2**63 - 1),
        ]))
        scalars[name] = draw(st.integers(low, high))
    elif fault == "size":  # B or N of attn (or a full map's queries) or of keys off by a few
        which, dim = draw(st.sampled_from([("attn", 0), ("attn", -1), ("attn", 2), ("keys", 0), ("keys", -2)]))
        if which == "attn":
            shape = [b, h, n, n] if dim == 2 else list(shapes["attn"])
        else:
            shape = list(shapes["keys"] or (b, n, hd))
        shape[dim] += draw(st.sampled_from([delta for delta in (-2, -1, 1, 3) if shape[dim] + delta >= 0]))
        shapes[which] = shape
    elif fault == "empty":  # D, H or Dk of 0
        which, dim = draw(st.sampled_from([("hidden", 2), ("attn", 1), ("keys", -1), ("keys", 1)]))
        shapes[which] = list({"hidden": (b, n, d), "attn": (b, h, n), "keys": (b, h, n, hd)}[which])
        shapes[which][dim] = 0
    else:
        scalars[draw(st.sampled_from(["k_dom", "k_ctx", "has_cls"]))] = draw(
            st.sampled_from([2.0, "2", None, [2], 2**64])
        )
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    tensors = {
        name: None if shape is None else torch.rand(tuple(shape), generator=gen).to(dtypes[name]).to(devices[name])
        for name, shape in shapes.items()
    }
    return {**tensors, **scalars}


def assert_unchanged(args: dict, originals: dict) -> None:
    for name, original in originals.items():
        assert torch.equal(args[name], original), f"`{name}` changed"


def snapshot(args: dict) -> dict:
    return {k: v.clone() for k, v in args.items() if isinstance(v, torch.Tensor) and v.device.type != "meta"}


@pytest.mark.parametrize("fault", FAULTS)
@settings(FUZZ, max_examples=60)
@given(data=st.data(), backend=st.sampled_from(["auto", "cpu", "reference", "triton"]))
def test_zip_tokens_rejects_random_bad_inputs(fault, data, backend):
    args = data.draw(bad_inputs(fault))
    originals = snapshot(args)
    with pytest.raises((ValueError, TypeError)):
        vz.zip_tokens(**args, backend=backend)
    assert_unchanged(args, originals)


@pytest.mark.parametrize("fault", FAULTS)
@settings(FUZZ, max_examples=30)
@given(data=st.data())
def test_public_op_rejects_random_bad_inputs(fault, data):
    args = data.draw(bad_inputs(fault))
    originals = snapshot(args)
    with pytest.raises((ValueError, TypeError, RuntimeError)) as raised:
        torch.ops.visionzip.zip_tokens(**args)
    if fault != "type":
        assert isinstance(raised.value, (ValueError, TypeError)), raised.value
    assert_unchanged(args, originals)


@settings(FUZZ, max_examples=240)
@given(args=st.sampled_from(TENSOR_FAULTS).flatmap(bad_inputs))
def check_cpu_op_rejects_like_python(args):
    with pytest.raises((ValueError, TypeError)) as expected:
        vz.zip_tokens(**args, backend="reference")
    originals = snapshot(args)
    with pytest.raises((ValueError, TypeError)) as raised:
        torch.ops.visionzip._zip_tokens_cpu(**args)
    assert (type(raised.value), str(raised.value)) == (type(expected.value), str(expected.value))
    assert_unchanged(args, originals)


def test_cpu_op_rejects_random_bad_inputs_like_python():
    child = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, f"exit code {child.returncode}\n{child.stdout[-4000:]}\n{child.stderr[-4000:]}"


if __name__ == "__main__":
    check_cpu_op_rejects_like_python()
