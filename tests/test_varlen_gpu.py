"""The varlen ops on a CUDA GPU: the Triton and CUDA C++ backends at Qwen-VL sizes against the
reference and the CPU kernel, GPU cu_seqlens with host seqlens, the op under opcheck."""
import pytest
import torch
from varlen_cases import DTYPES, assert_zip_varlen_matches_reference, make_packed

import visionzip_kernels as vz
from visionzip_kernels.ops.attention_importance_varlen import reference as importance_reference

pytestmark = pytest.mark.cuda

# Merged-token counts of Qwen2.5-VL images (14 px patches, 2x2 merge): 1024x1024 -> 37x37 = 1369,
# 448x812 -> 16x29 = 464, 336x336 -> 144, one 4096-token image, and a 1-token one.
QWEN_SIZES = (1369, 464, 144, 4096, 1)


def on_gpu(packed: dict) -> dict:
    return {name: value.cuda() if isinstance(value, torch.Tensor) else value for name, value in packed.items()}


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dominant,contextual", [(0.65, 0.05), (0.45, 0.05), (0.1, 0.2)], ids=str)
def test_zip_tokens_varlen_gpu_backend_matches_reference(backend, dtype, dominant, contextual):
    packed = make_packed(QWEN_SIZES, 3584, 80, dtype, seed=12)
    gpu = on_gpu(packed)
    outputs = vz.zip_tokens_varlen(
        gpu["hidden"], gpu["importance"], gpu["cu_seqlens"], dominant, contextual, gpu["keys"],
        seqlens=list(QWEN_SIZES), backend=backend,
    )
    k_dom = [int(dominant * size) for size in QWEN_SIZES]
    k_ctx = [max(int(contextual * size), 1) for size in QWEN_SIZES]
    assert_zip_varlen_matches_reference(outputs, packed, k_dom, k_ctx)
    cpu = vz.zip_tokens_varlen(
        packed["hidden"], packed["importance"], packed["cu_seqlens"], dominant, contextual, packed["keys"], backend="cpu"
    )
    assert torch.equal(outputs[1].cpu(), cpu[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_attention_importance_varlen_triton_matches_float64(dtype):
    patches = tuple(4 * size for size in (1369, 464, 144))
    packed = make_packed(patches, 8, 4, dtype, seed=13, heads=16, head_dim=80)
    gpu = on_gpu(packed)
    got = vz.attention_importance_varlen(gpu["q"], gpu["k"], gpu["cu_seqlens"], seqlens=list(patches), backend="triton")
    exact = importance_reference.attention_importance_varlen(
        gpu["q"], gpu["k"], gpu["cu_seqlens"], list(patches), 80 ** -0.5, None, torch.float64
    )
    torch.testing.assert_close(got.double(), exact, rtol=2e-5, atol=1e-6)


def test_opcheck_on_gpu():
    packed = on_gpu(make_packed((90, 37, 13), 64, 16, torch.bfloat16, seed=14, heads=2, head_dim=16))
    zip_args = (packed["hidden"], packed["importance"], packed["cu_seqlens"], [90, 37, 13], [58, 24, 8], [4, 1, 1], packed["keys"])
    torch.library.opcheck(torch.ops.visionzip._zip_tokens_varlen_triton, zip_args)
    torch.library.opcheck(torch.ops.visionzip._zip_tokens_varlen_cuda, zip_args)
    importance_args = (packed["q"], packed["k"], packed["cu_seqlens"], [90, 37, 13], 0.25)
    torch.library.opcheck(torch.ops.visionzip._attention_importance_varlen_triton, importance_args)
