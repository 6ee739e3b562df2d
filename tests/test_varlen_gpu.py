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


def test_zip_tokens_varlen_cuda_refuses_mismatched_gpu_cu_seqlens():
    """A GPU cu_seqlens that disagrees with seqlens: the segments it bounds wrongly get kept index -1
    and NaN rows (the issue's smallest case among them), the others their right rows."""
    sizes, k_dom, k_ctx = (37, 1, 90, 76), [20, 0, 45, 30], [3, 1, 9, 46]
    packed = make_packed(sizes, 20, 6, torch.bfloat16, seed=15)
    gpu = on_gpu(packed)
    wrong = torch.tensor([0, 37, 37, 128, 204], device="cuda")  # segments 1 and 2 bounded wrongly
    tokens, kept_idx, cu_kept = torch.ops.visionzip._zip_tokens_varlen_cuda(
        gpu["hidden"], gpu["importance"], wrong, list(sizes), k_dom, k_ctx, gpu["keys"]
    )
    right = torch.ops.visionzip._zip_tokens_varlen_cuda(
        gpu["hidden"], gpu["importance"], gpu["cu_seqlens"], list(sizes), k_dom, k_ctx, gpu["keys"]
    )
    assert torch.equal(cu_kept, right[2])
    refused = slice(int(cu_kept[1]), int(cu_kept[3]))
    assert (kept_idx[refused] == -1).all() and tokens[refused].isnan().all()
    for rows in (slice(0, int(cu_kept[1])), slice(int(cu_kept[3]), int(cu_kept[4]))):
        assert torch.equal(kept_idx[rows], right[1][rows]) and torch.equal(tokens[rows], right[0][rows])
    h = torch.randn(4, 8, device="cuda")
    tokens, kept_idx, _ = vz.zip_tokens_varlen(
        h, torch.rand(4, device="cuda"), torch.tensor([0, 2], device="cuda"), 1, 3, seqlens=[4], backend="cuda"
    )
    assert kept_idx.tolist() == [-1] * 4 and tokens.isnan().all()


def test_zip_tokens_varlen_cuda_checks_a_cpu_cu_seqlens_on_the_host():
    packed = on_gpu(make_packed((9, 14), 16, 6, torch.float32, seed=16))
    with pytest.raises(RuntimeError, match="cu_seqlens must hold the offsets of seqlens"):
        torch.ops.visionzip._zip_tokens_varlen_cuda(
            packed["hidden"], packed["importance"], torch.tensor([0, 10, 23]), [9, 14], [4, 4], [2, 2], packed["keys"]
        )


@pytest.mark.parametrize("cu_on_gpu", [False, True], ids=["cpu-cu_seqlens", "gpu-cu_seqlens"])
def test_zip_tokens_varlen_cuda_never_synchronises_and_is_captured_in_a_graph(cu_on_gpu):
    """No synchronising call (sync debug mode "error"), and a CUDA graph replays the op on new values."""
    sizes = (1369, 464, 1)
    packed = make_packed(sizes, 256, 32, torch.bfloat16, seed=17)
    gpu = on_gpu(packed)
    cu_seqlens = gpu["cu_seqlens"] if cu_on_gpu else packed["cu_seqlens"]

    def run():
        return vz.zip_tokens_varlen(
            gpu["hidden"], gpu["importance"], cu_seqlens, 0.45, 0.05, gpu["keys"], seqlens=list(sizes), backend="cuda"
        )

    run()  # loads the extension outside the checks
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()  # warm-up on the capture stream, as torch.cuda.graphs recommends
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run()
    fresh = make_packed(sizes, 256, 32, torch.bfloat16, seed=18)
    for name in ("hidden", "importance", "keys"):
        gpu[name].copy_(fresh[name])
    graph.replay()
    torch.cuda.synchronize()
    k_dom = [int(0.45 * size) for size in sizes]
    k_ctx = [max(int(0.05 * size), 1) for size in sizes]
    assert_zip_varlen_matches_reference(captured, fresh, k_dom, k_ctx)
