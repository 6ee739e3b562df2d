"""The Triton backend on a CUDA GPU: parity at full size, the op under opcheck, CUDA graphs, torch.compile."""
import zlib
from dataclasses import replace

import pytest
import torch
from varlen_cases import assert_zip_varlen_matches_reference, make_packed
from zip_cases import DTYPES, EDGE_CASES, MODEL_CASES, SMALL_CASES, ZipCase, assert_matches_reference, make_inputs

import visionzip_kernels as vz
from visionzip_kernels.ops.zip_tokens.triton import cuda_launch_config, launch_apply, launch_plan
from visionzip_kernels.ops.zip_tokens_varlen.triton import launch_zip_tokens_varlen

pytestmark = pytest.mark.cuda

LARGE_CASES = [
    ZipCase(1, 4096, 256, 16, 64, 512, 64),  # N = 4096
    ZipCase(2, 4096, 128, 8, 32, 300, 100, has_cls=False, key_layout="heads"),
    ZipCase(2, 577, 4096, 16, 64, 54, 10, key_layout="none"),  # D = 4096, hidden as the metric
    ZipCase(1, 1024, 64, 4, 16, 100, 30, has_cls=False, attn_layout="full"),  # column sums over 1024 queries
]

OPCHECK_CASES = [
    ZipCase(2, 577, 1024, 16, 64, 54, 10),
    ZipCase(1, 40, 16, 2, 8, 5, 0, has_cls=False, attn_layout="full", key_layout="heads"),
    ZipCase(3, 21, 10, 2, 4, 4, 3, attn_layout="scores", key_layout="none"),
]


def seed_of(case: ZipCase) -> int:
    return zlib.crc32(str(case).encode()) % 1000


def op_args(inputs: dict) -> tuple:
    return tuple(inputs[k] for k in ("hidden", "attn", "k_dom", "k_ctx", "keys", "has_cls"))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", MODEL_CASES + SMALL_CASES + EDGE_CASES + LARGE_CASES, ids=str)
def test_matches_reference(case, dtype):
    inputs = make_inputs(case, dtype, device="cuda", seed=seed_of(case))
    assert_matches_reference(*vz.zip_tokens(**inputs, backend="triton"), inputs)


@pytest.mark.parametrize("batch", [1, 5, 7, 8, 64, 256])
@pytest.mark.parametrize("has_cls", [True, False], ids=["clip-l-336", "siglip-384"])
def test_batch_sizes(batch, has_cls):
    """CLIP-L/336 (N=577, D=1024, CLS) and SigLIP-384 (N=729, D=1152, no CLS) at 54+10, bf16, at the
    batches whose launch tiles differ (one image, LLaVA-NeXT's 5 crops, 8, and batches that fill the GPU)."""
    case = ZipCase(batch, 577, 1024, 16, 64, 54, 10) if has_cls else ZipCase(batch, 729, 1152, 16, 72, 54, 10, False)
    inputs = make_inputs(case, torch.bfloat16, device="cuda", seed=batch)
    assert_matches_reference(*vz.zip_tokens(**inputs, backend="triton"), inputs)


@pytest.mark.parametrize(
    "case",
    [ZipCase(3, 577, 1024, 16, 64, 54, 10), ZipCase(2, 729, 1152, 16, 72, 108, 20, has_cls=False, attn_layout="full")],
    ids=str,
)
def test_work_split_of_small_and_large_batches_gives_the_same_plan(case):
    """The GPU tiles for one image and for a large batch, and a split with the narrowest radix
    passes and token blocks, give the same plan bit for bit, and the reference's tokens."""
    inputs = make_inputs(case, torch.bfloat16, device="cuda", seed=seed_of(case))
    small = cuda_launch_config(132, 1, case.n_tokens, case.width, case.k_ctx)
    large = cuda_launch_config(132, 512, case.n_tokens, case.width, case.k_ctx)
    narrow = replace(small, radix_bits=1, block_m=16, assign_block_t=4, column_block=32)
    plans = []
    for config in (small, large, narrow):
        plan = launch_plan(*op_args(inputs), config)
        tokens = launch_apply(inputs["hidden"], plan, case.k_dom, case.k_ctx, config)
        assert_matches_reference(tokens, plan.dominant_idx, inputs)
        plans.append(plan)
    for plan in plans[1:]:
        assert torch.equal(plan.destination, plans[0].destination) and torch.equal(plan.targets, plans[0].targets)


@pytest.mark.parametrize("batch_tiles", [1, 512])
def test_varlen_work_split_gives_the_reference(batch_tiles):
    """zip_tokens_varlen on Qwen2.5-VL-like segments (the largest one of CLIP-L's size) with the GPU
    tiles of one image, of a large batch and the narrowest split: the reference's kept indices."""
    sizes = (577, 391, 1, 1036, 64)
    packed = make_packed(sizes, 1280, 80, torch.bfloat16, seed=batch_tiles)
    k_dom = [int(0.1 * size) for size in sizes]
    k_ctx = [max(int(0.05 * size), 1) for size in sizes]
    config = cuda_launch_config(132, batch_tiles, max(sizes), 1280, max(k_ctx))
    cuda = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in packed.items()}
    args = (cuda["hidden"], cuda["importance"], cuda["cu_seqlens"], list(sizes), k_dom, k_ctx, cuda["keys"])
    for tiles in (config, replace(config, radix_bits=1, block_m=16, assign_block_t=4)):
        assert_zip_varlen_matches_reference(launch_zip_tokens_varlen(*args, tiles), packed, k_dom, k_ctx)


def test_same_answer_as_cpu_backend_and_deterministic():
    case = ZipCase(4, 577, 256, 16, 64, 108, 20, key_layout="heads")
    inputs = make_inputs(case, torch.bfloat16, device="cuda", seed=8)
    first = vz.zip_tokens(**inputs, backend="triton")
    second = vz.zip_tokens(**inputs, backend="triton")
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    cpu = vz.zip_tokens(**{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}, backend="cpu")
    assert torch.equal(first[1].cpu(), cpu[1])


def test_non_contiguous_and_mixed_dtypes():
    case = ZipCase(3, 577, 256, 16, 64, 54, 10, attn_layout="full", key_layout="heads")
    inputs = make_inputs(case, torch.bfloat16, device="cuda", seed=9)
    strided = dict(inputs)
    strided["hidden"] = inputs["hidden"].transpose(1, 2).contiguous().transpose(1, 2)
    strided["attn"] = inputs["attn"].float().transpose(2, 3).contiguous().transpose(2, 3)
    strided["keys"] = inputs["keys"].half().permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    reference_inputs = dict(inputs, attn=strided["attn"].contiguous(), keys=strided["keys"].contiguous())
    assert_matches_reference(*vz.zip_tokens(**strided, backend="triton"), reference_inputs)


@pytest.mark.parametrize("case", OPCHECK_CASES, ids=str)
def test_opcheck(case):
    inputs = make_inputs(case, torch.bfloat16, device="cuda", seed=2)
    torch.library.opcheck(torch.ops.visionzip._zip_tokens_triton, op_args(inputs))


def test_cuda_graph_capture_and_replay():
    case = ZipCase(4, 577, 1024, 16, 64, 54, 10, key_layout="heads")
    static = make_inputs(case, torch.bfloat16, device="cuda", seed=5)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        vz.zip_tokens(**static, backend="triton")  # compiles the kernels outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        tokens, dominant_idx = vz.zip_tokens(**static, backend="triton")

    fresh = make_inputs(case, torch.bfloat16, device="cuda", seed=6)
    for name in ("hidden", "attn", "keys"):
        static[name].copy_(fresh[name])
    graph.replay()
    expected = vz.zip_tokens(**fresh, backend="triton")
    assert torch.equal(tokens, expected[0]) and torch.equal(dominant_idx, expected[1])
    assert_matches_reference(tokens, dominant_idx, fresh)


def test_torch_compile_fullgraph():
    case = ZipCase(2, 577, 1024, 16, 64, 54, 10, key_layout="heads")
    inputs = make_inputs(case, torch.bfloat16, device="cuda", seed=3)

    def zipped_and_scaled(hidden, attn, keys):
        tokens, dominant_idx = vz.zip_tokens(hidden, attn, 54, 10, keys, backend="triton")
        return tokens * 2, dominant_idx

    compiled = torch.compile(zipped_and_scaled, fullgraph=True)
    tokens, dominant_idx = compiled(inputs["hidden"], inputs["attn"], inputs["keys"])
    eager = vz.zip_tokens(**inputs, backend="triton")
    assert torch.equal(dominant_idx, eager[1])
    assert_matches_reference(tokens / 2, dominant_idx, inputs)


def test_hidden_offsets_past_two_to_the_31():
    batch, n_tokens, width = 1100, 577, 4096  # B * N * D = 2.6e9 elements
    gen = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(batch, n_tokens, width, device="cuda", dtype=torch.bfloat16, generator=gen)
    attn = torch.randn(batch, 16, n_tokens, device="cuda", generator=gen).mul(3).softmax(-1)
    keys = torch.randn(batch, n_tokens, 64, device="cuda", dtype=torch.bfloat16, generator=gen)
    tokens, dominant_idx = vz.zip_tokens(hidden, attn, 54, 10, keys, backend="triton")
    last = dict(hidden=hidden[-2:], attn=attn[-2:], keys=keys[-2:], k_dom=54, k_ctx=10, has_cls=True)
    assert_matches_reference(tokens[-2:], dominant_idx[-2:], last)


def test_attention_map_offsets_past_two_to_the_31():
    batch, heads, n_tokens = 9, 16, 4096  # B * H * N * N = 2.4e9 elements: the CLS rows of the last images
    gen = torch.Generator(device="cuda").manual_seed(1)
    attn = torch.rand(batch, heads, n_tokens, n_tokens, device="cuda", dtype=torch.bfloat16, generator=gen)
    hidden = torch.randn(batch, n_tokens, 64, device="cuda", generator=gen)
    keys = torch.randn(batch, n_tokens, 16, device="cuda", generator=gen)
    tokens, dominant_idx = vz.zip_tokens(hidden, attn, 300, 60, keys, backend="triton")
    last = dict(hidden=hidden[-1:], attn=attn[-1:], keys=keys[-1:], k_dom=300, k_ctx=60, has_cls=True)
    assert_matches_reference(tokens[-1:], dominant_idx[-1:], last)
