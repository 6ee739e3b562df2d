"""Every bad input the contract lists raises a clear error naming the argument, and writes nothing."""
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


@pytest.mark.parametrize("name,value,error,message", [bad for bad in BAD_INPUTS if bad[2] is ValueError])
def test_torch_ops_entry_point_validates_too(name, value, error, message):
    """The schema rejects wrong Python types itself; every value error comes from the validation."""
    args = good_args()
    args[name] = value
    with pytest.raises(error, match=message):
        torch.ops.visionzip.zip_tokens(
            args["hidden"], args["attn"], args["k_dom"], args["k_ctx"], args["keys"], args["has_cls"]
        )


def test_unknown_backend():
    with pytest.raises(ValueError, match="`backend` must be one of"):
        vz.zip_tokens(**good_args(), backend="fast")


def test_cuda_backend_on_cpu_tensors():
    with pytest.raises(ValueError, match="backend='cuda' is not available on cpu"):
        vz.zip_tokens(**good_args(), backend="cuda")
