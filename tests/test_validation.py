"""Every bad input the contract lists raises a clear error naming the argument, and writes nothing."""
import numpy as np
import pytest
import torch

import visionzip_kernels as vz

B, N, D, H = 2, 30, 16, 4


def good_args():
    gen = torch.Generator().manual_seed(0)
    return {
        "hidden": torch.randn(B, N, D, generator=gen),
        "attn": torch.rand(B, H, N, generator=gen),
        "k_dom": 6,
        "k_ctx": 4,
        "keys": torch.randn(B, N, 8, generator=gen),
        "has_cls": True,
    }


BAD_INPUTS = [
    ("hidden", torch.randn(N, D), ValueError, r"`hidden` must be \[B, N, D\]"),
    ("hidden", torch.randn(B, N, D).to(torch.int32), ValueError, "`hidden` must be float32, float16 or bfloat16"),
    ("hidden", torch.randn(B, N, D).double(), ValueError, "`hidden` must be float32, float16 or bfloat16"),
    ("hidden", [[0.0]], TypeError, "`hidden` must be a torch.Tensor"),
    ("attn", torch.rand(B, H, N, N, 1), ValueError, r"`attn` must be \[B, H, N, N\]"),
    ("attn", torch.rand(B + 1, H, N), ValueError, "`attn` must have B=2 and N=30"),
    ("attn", torch.rand(B, N - 1), ValueError, "`attn` must have B=2 and N=30"),
    ("attn", torch.rand(B, H, N - 2, N), ValueError, r"full `attn` map must be \[B, H, N, N\]"),
    ("attn", torch.rand(B, H, N).half().to(torch.int64), ValueError, "`attn` must be float32"),
    ("attn", torch.rand(B, H, N, device="meta"), ValueError, "`attn` is on meta but `hidden` is on cpu"),
    ("keys", torch.randn(B, N), ValueError, r"`keys` must be \[B, N, Dk\] or \[B, H, N, hd\]"),
    ("keys", torch.randn(B, N + 1, 8), ValueError, "`keys` must have B=2 and N=30"),
    ("keys", torch.randn(B, H, N + 1, 8), ValueError, "`keys` must have B=2 and N=30"),
    ("keys", torch.randn(B, N, 8, device="meta"), ValueError, "`keys` is on meta"),
    ("k_dom", 0, ValueError, "`k_dom` must be >= 1"),
    ("k_dom", -3, ValueError, "`k_dom` must be >= 1"),
    ("k_dom", 2.0, TypeError, "`k_dom` must be an int"),
    ("k_dom", True, TypeError, "`k_dom` must be an int"),
    ("k_ctx", -1, ValueError, "`k_ctx` must be >= 0"),
    ("k_ctx", 25, ValueError, r"`k_dom` \+ `k_ctx` must be <= N=30"),
    ("k_dom", 31, ValueError, r"`k_dom` \+ `k_ctx` must be <= N=30"),
    ("has_cls", 1, TypeError, "`has_cls` must be a bool"),
    ("has_cls", None, TypeError, "`has_cls` must be a bool, got NoneType"),
    ("hidden", torch.randn(B, N, 0), ValueError, r"`hidden` must have D >= 1"),
    ("attn", torch.rand(B, 0, N), ValueError, r"`attn` must have H >= 1"),
    ("attn", torch.rand(B, 0, N, N), ValueError, r"`attn` must have H >= 1"),
    ("keys", torch.randn(B, N, 0), ValueError, r"`keys` must have Dk >= 1"),
    ("keys", torch.randn(B, 0, N, 8), ValueError, r"`keys` must have H >= 1"),
    ("keys", torch.randn(B, H, N, 0), ValueError, r"`keys` must have Dk >= 1"),
    ("k_dom", 2**63, ValueError, "`k_dom` must fit in 64 bits"),
    ("k_ctx", torch.tensor(2.7), TypeError, "`k_ctx` must be an int, got Tensor"),
    ("k_dom", np.bool_(True), TypeError, "`k_dom` must be an int, got bool"),
    ("k_dom", torch.tensor(True), TypeError, "`k_dom` must be an int, got bool"),
]


@pytest.mark.parametrize("backend", ["auto", "cpu", "reference"])
@pytest.mark.parametrize("name,value,error,message", BAD_INPUTS, ids=lambda v: v if isinstance(v, str) else None)
def test_bad_input_raises_and_writes_nothing(name, value, error, message, backend):
    args = good_args()
    originals = {k: v.clone() for k, v in args.items() if isinstance(v, torch.Tensor)}
    args[name] = value
    with pytest.raises(error, match=message):
        vz.zip_tokens(**args, backend=backend)
    for key, original in originals.items():
        if key != name:
            assert torch.equal(args[key], original)


PARSER_REJECTS = {"k_dom": 2**63}  # PyTorch's argument parser refuses an int beyond 64 bits first


@pytest.mark.parametrize(
    "name,value,error,message", [bad for bad in BAD_INPUTS if bad[2] is ValueError and PARSER_REJECTS.get(bad[0]) != bad[1]]
)
def test_torch_ops_entry_point_validates_too(name, value, error, message):
    """The schema rejects wrong Python types itself; every value error comes from the validation."""
    args = good_args()
    args[name] = value
    with pytest.raises(error, match=message):
        torch.ops.visionzip.zip_tokens(
            args["hidden"], args["attn"], args["k_dom"], args["k_ctx"], args["keys"], args["has_cls"]
        )


@pytest.mark.parametrize("k_dom", [2**63, 6.0])
def test_torch_ops_parser_refuses_non_int64_budgets(k_dom):
    """Through torch.ops, PyTorch parses arguments by the schema before the validation runs."""
    args = good_args()
    with pytest.raises(RuntimeError, match="Expected a value of type 'int' for argument 'k_dom'"):
        torch.ops.visionzip.zip_tokens(args["hidden"], args["attn"], k_dom, 4, args["keys"], True)


def test_none_has_cls_is_refused_through_torch_ops():
    args = good_args()
    with pytest.raises(TypeError, match="`has_cls` must be a bool, got NoneType"):
        torch.ops.visionzip.zip_tokens(args["hidden"], args["attn"], 6, 4, args["keys"], None)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_numpy_and_tensor_scalars_are_accepted_as_their_values(backend):
    args = good_args()
    expected = vz.zip_tokens(**args, backend=backend)
    scalars = dict(args, k_dom=np.int64(6), k_ctx=torch.tensor(4), has_cls=np.bool_(True))
    got = vz.zip_tokens(**scalars, backend=backend)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_unknown_backend():
    with pytest.raises(ValueError, match="`backend` must be one of"):
        vz.zip_tokens(**good_args(), backend="fast")


def test_cuda_backend_on_cpu_tensors():
    with pytest.raises(ValueError, match="backend='cuda' is not available on cpu"):
        vz.zip_tokens(**good_args(), backend="cuda")


@pytest.mark.parametrize(
    "hidden, attn, k_dom, k_ctx, message",
    [
        (torch.randn(1, 4, 2), torch.rand(1, 0, 4), 2, 1, "`attn` must have H >= 1"),
        (torch.randn(1, 5, 2), torch.rand(1, 5), 4, 3, r"`k_dom` \+ `k_ctx` must be <= N=5"),
    ],
)
def test_the_triton_backend_op_validates_its_inputs(hidden, attn, k_dom, k_ctx, message):
    """`torch.ops.visionzip._zip_tokens_triton` is public too: a bad input is refused, never launched."""
    with pytest.raises(ValueError, match=message):
        torch.ops.visionzip._zip_tokens_triton(hidden, attn, k_dom, k_ctx, None, True)
