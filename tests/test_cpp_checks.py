"""The C++ entry points (``torch.ops.visionzip._zip_tokens_cpu`` and ``_zip_tokens_cuda``) check
their own inputs (csrc/zip_tokens_checks.h): every input the contract rejects raises the error that
``visionzip_kernels.zip_tokens`` raises for it, same type and same message, and never reaches a
kernel. The CPU cases run in a child process, so that a kernel that crashes on one fails that case
instead of killing the test run.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import visionzip_kernels as vz


def args(hidden=(2, 5, 7), attn=(2, 3, 5), k_dom=2, k_ctx=1, keys=None, has_cls=True, dtypes=None, seed=0):
    """Keyword arguments of zip_tokens with random tensors of the given shapes (``keys`` None: none)."""
    gen = torch.Generator().manual_seed(seed)
    dtypes = dtypes or {}
    tensors = {
        name: None if shape is None else torch.rand(shape, generator=gen).to(dtypes.get(name, torch.float32))
        for name, shape in (("hidden", hidden), ("attn", attn), ("keys", keys))
    }
    return {**tensors, "k_dom": k_dom, "k_ctx": k_ctx, "has_cls": has_cls}


# Each rejected input, by name. The first five are the crashes and out-of-bounds reads the kernel
# had when it trusted its inputs.
BAD_CASES = {
    "budget-over-N": lambda: args(k_dom=4, k_ctx=3),
    "attn-more-tokens-than-hidden": lambda: args(attn=(2, 3, 7)),
    "attn-fewer-images-than-hidden": lambda: args(attn=(1, 3, 5)),
    "attn-zero-heads": lambda: args(attn=(2, 0, 5)),
    "keys-zero-heads": lambda: args(keys=(2, 0, 5, 4)),
    "hidden-D-0": lambda: args(hidden=(2, 5, 0)),
    "keys-Dk-0": lambda: args(keys=(2, 5, 0)),
    "full-attn-zero-heads": lambda: args(attn=(2, 0, 5, 5)),
    "full-attn-wrong-queries": lambda: args(attn=(2, 3, 4, 5)),
    "attn-scores-wrong-B": lambda: args(attn=(3, 5)),
    "keys-wrong-B": lambda: args(keys=(1, 5, 4)),
    "keys-wrong-N": lambda: args(keys=(2, 6, 4)),
    "head-keys-wrong-N": lambda: args(keys=(2, 3, 4, 4)),
    "hidden-rank-2": lambda: args(hidden=(5, 7)),
    "hidden-rank-4": lambda: args(hidden=(2, 5, 7, 1)),
    "hidden-rank-0": lambda: args(hidden=()),
    "attn-rank-1": lambda: args(attn=(5,)),
    "attn-rank-5": lambda: args(attn=(2, 3, 5, 5, 1)),
    "keys-rank-2": lambda: args(keys=(5, 4)),
    "keys-rank-5": lambda: args(keys=(2, 3, 5, 4, 1)),
    "hidden-float64": lambda: args(dtypes={"hidden": torch.float64}),
    "hidden-int32": lambda: args(dtypes={"hidden": torch.int32}),
    "attn-int64": lambda: args(dtypes={"attn": torch.int64}),
    "attn-uint8": lambda: args(dtypes={"attn": torch.uint8}),
    "keys-bool": lambda: args(keys=(2, 5, 4), dtypes={"keys": torch.bool}),
    "keys-complex64": lambda: args(keys=(2, 5, 4), dtypes={"keys": torch.complex64}),
    "k_dom-0-cls": lambda: args(k_dom=0),
    "k_dom-0-no-cls": lambda: args(k_dom=0, has_cls=False),
    "k_dom-negative": lambda: args(k_dom=-(2**63)),
    "k_ctx-negative": lambda: args(k_ctx=-1),
    "budget-overflows-int64": lambda: args(k_dom=2**62, k_ctx=2**62),
    "budget-max-int64": lambda: args(k_dom=2**63 - 1, k_ctx=2**63 - 1),
    "no-tokens": lambda: args(hidden=(2, 0, 7), attn=(2, 3, 0)),
}


def python_error(case: dict) -> tuple[str, str]:
    """The error type and message of the Python validation (``zip_tokens``) for ``case``."""
    with pytest.raises((ValueError, TypeError)) as raised:
        vz.zip_tokens(**case, backend="reference")
    return type(raised.value).__name__, str(raised.value)


def run_cases_in_child(names: list[str]) -> dict[str, dict]:
    """Runs ``_zip_tokens_cpu`` on each named case in a child process; name -> {"error", "message"}
    (error None: no exception), or {"crashed": how} for a case that killed the child, after which a
    new child takes the cases that remain."""
    results: dict[str, dict] = {}
    while names:
        child = subprocess.run([sys.executable, __file__, *names], capture_output=True, text=True, timeout=300)
        started = None
        for line in child.stdout.splitlines():
            kind, _, payload = line.partition(" ")
            if kind == "START":
                started = payload
            elif kind == "RESULT":
                result = json.loads(payload)
                results[result.pop("name")] = result
                started = None
        if started is None:
            break
        results[started] = {"crashed": f"exit code {child.returncode}: {child.stderr[-2000:]}"}
        names = names[names.index(started) + 1:]
    return results


@pytest.fixture(scope="module")
def cpu_results():
    return run_cases_in_child(list(BAD_CASES))


@pytest.mark.parametrize("name", list(BAD_CASES))
def test_cpu_entry_point_rejects_like_python(name, cpu_results):
    assert name in cpu_results, f"the child process never reached {name}"
    result = cpu_results[name]
    assert "crashed" not in result, f"_zip_tokens_cpu crashed: {result['crashed']}"
    error, message = python_error(BAD_CASES[name]())
    assert (result["error"], result["message"]) == (error, message)


def test_issue_reproductions_name_the_problem(cpu_results):
    assert "`k_dom` + `k_ctx` must be <= N=5 tokens, got 4 + 3 = 7" in cpu_results["budget-over-N"]["message"]
    assert "`attn` must have B=2 and N=5 like `hidden` (2, 5, 7), got shape (2, 3, 7)" in (
        cpu_results["attn-more-tokens-than-hidden"]["message"]
    )
    assert "got shape (1, 3, 5)" in cpu_results["attn-fewer-images-than-hidden"]["message"]
    assert "`attn` must have H >= 1" in cpu_results["attn-zero-heads"]["message"]
    assert "`keys` must have Dk >= 1" in cpu_results["keys-Dk-0"]["message"]
    assert "got 4611686018427387904 + 4611686018427387904 = 9223372036854775808" in (
        cpu_results["budget-overflows-int64"]["message"]
    )


def test_triton_with_zero_heads_is_rejected():
    # Issue reproduction: zero heads used to reach the Triton kernel and crash the interpreter.
    with pytest.raises(ValueError, match="`attn` must have H >= 1"):
        vz.zip_tokens(torch.randn(1, 4, 2), torch.rand(1, 0, 4), 2, 1, backend="triton")


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(BAD_CASES))
def test_cuda_entry_point_rejects_like_python(name):
    case = BAD_CASES[name]()
    error, message = python_error(case)
    on_gpu = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in case.items()}
    with pytest.raises((ValueError, TypeError)) as raised:
        torch.ops.visionzip._zip_tokens_cuda(**on_gpu)
    assert (type(raised.value).__name__, str(raised.value)) == (error, message)


@pytest.mark.cuda
@pytest.mark.parametrize("on_cpu", ["attn", "keys"])
def test_cuda_entry_point_rejects_a_cpu_tensor(on_cpu):
    case = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in args(keys=(2, 5, 4)).items()}
    case[on_cpu] = case[on_cpu].cpu()
    with pytest.raises(ValueError, match=f"`{on_cpu}` is on cpu but `hidden` is on cuda:0"):
        torch.ops.visionzip._zip_tokens_cuda(**case)


if __name__ == "__main__":
    # Child process: run each named case through the C++ CPU entry point, one line per result.
    for case_name in sys.argv[1:]:
        print("START", case_name, flush=True)
        outcome = {"name": case_name, "error": None, "message": None}
        try:
            torch.ops.visionzip._zip_tokens_cpu(**BAD_CASES[case_name]())
        except Exception as exc:  # noqa: BLE001  (the type is what the test compares)
            outcome.update(error=type(exc).__name__, message=str(exc))
        print("RESULT", json.dumps(outcome), flush=True)
