"""The Triton backend on CPU tensors, through Triton's interpreter, against the reference.

Without CUDA, conftest sets TRITON_INTERPRET=1 and ``TestInterpreted`` runs here. With CUDA the
kernels compile for the GPU instead, so ``test_interpreted_in_subprocess`` runs this module again
in a process with TRITON_INTERPRET=1. The remaining tests need no interpreter: the error without
it, and the GPU build of the kernels (compiled for sm_90, no GPU needed).
"""
import os
import subprocess
import sys
import zlib

import pytest
import torch
from zip_cases import DTYPES, EDGE_CASES, MODEL_CASES, SMALL_CASES, ZipCase, assert_matches_reference, make_inputs

import visionzip_kernels as vz
from visionzip_kernels.ops import triton_interpreter_on
from visionzip_kernels.triton.zip_tokens import LaunchConfig, cuda_launch_config, launch_zip_tokens


def seed_of(case: ZipCase) -> int:
    return zlib.crc32(str(case).encode()) % 1000


def without_interpreter() -> dict:
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


@pytest.mark.skipif(
    not triton_interpreter_on(), reason="CUDA machine: test_interpreted_in_subprocess runs these"
)
class TestInterpreted:
    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("case", SMALL_CASES + EDGE_CASES, ids=str)
    def test_matches_reference(self, case, dtype):
        inputs = make_inputs(case, dtype, seed=seed_of(case))
        assert_matches_reference(*vz.zip_tokens(**inputs, backend="triton"), inputs)

    @pytest.mark.parametrize("case", [MODEL_CASES[0], MODEL_CASES[3]], ids=str)
    def test_model_sizes_with_gpu_tiles(self, case):
        """CLIP-L/336 and SigLIP geometries, launched with the tiles an H100 (132 SMs) gets."""
        inputs = make_inputs(case, torch.bfloat16, seed=seed_of(case))
        config = cuda_launch_config(132, case.batch, case.n_tokens, case.width, case.k_ctx)
        assert config.slices > 1 and config.block_m == 128
        args = [inputs[k] for k in ("hidden", "attn", "k_dom", "k_ctx", "keys", "has_cls")]
        assert_matches_reference(*launch_zip_tokens(*args, config), inputs)

    def test_any_tiling_gives_the_same_indices(self):
        """Slices, token blocks, target blocks and channel blocks of every size decide alike."""
        case = ZipCase(1, 70, 96, 4, 16, 9, 21, has_cls=False, attn_layout="full", key_layout="heads")
        inputs = make_inputs(case, torch.float16, seed=11)
        args = [inputs[k] for k in ("hidden", "attn", "k_dom", "k_ctx", "keys", "has_cls")]
        tiny = LaunchConfig(
            slices=3, block_m=16, plan_block_t=4, plan_warps=1, block_c=16, block_j=16, apply_block_t=16, apply_warps=1
        )
        configs = [tiny, cuda_launch_config(132, 1, 70, 96, 21), None]
        results = [launch_zip_tokens(*args, c) if c else vz.zip_tokens(**inputs, backend="triton") for c in configs]
        for tokens, dominant_idx in results:
            assert_matches_reference(tokens, dominant_idx, inputs)
            assert torch.equal(dominant_idx, results[0][1])

    def test_score_ties_go_to_the_lower_index(self):
        gen = torch.Generator().manual_seed(3)
        scores = torch.randint(0, 4, (3, 40), generator=gen).float()  # four levels: ties everywhere
        hidden = torch.randn(3, 40, 16, generator=gen)
        for has_cls in (True, False):
            tokens, dominant_idx = vz.zip_tokens(hidden, scores, 13, 3, has_cls=has_cls, backend="triton")
            for b in range(3):
                first = 1 if has_cls else 0
                ranked = sorted(range(first, 40), key=lambda j: (-scores[b, j].item(), j))
                assert dominant_idx[b].tolist() == sorted(([0] if has_cls else []) + ranked[: 13 - first])
            inputs = dict(hidden=hidden, attn=scores, k_dom=13, k_ctx=3, keys=None, has_cls=has_cls)
            assert_matches_reference(tokens, dominant_idx, inputs)

    def test_signed_zero_scores_tie(self):
        scores = torch.tensor([[0.5, -0.0, 0.0, -0.0, 0.25, 0.0]])
        hidden = torch.randn(1, 6, 8)
        _, dominant_idx = vz.zip_tokens(hidden, scores, 4, 0, has_cls=False, backend="triton")
        assert dominant_idx.tolist() == [[0, 1, 2, 4]]

    def test_similarity_ties_go_to_the_lower_target(self):
        gen = torch.Generator().manual_seed(4)
        n_tokens, k_dom, k_ctx = 41, 11, 6  # M = 30, step = 5: targets at remaining positions 0, 5, ..., 25
        hidden = torch.randn(2, n_tokens, 16, generator=gen)
        scores = torch.rand(2, n_tokens, generator=gen)
        keys = torch.randn(2, n_tokens, 8, generator=gen)
        _, dominant_idx = vz.zip_tokens(hidden, scores, k_dom, k_ctx, keys, backend="reference")
        is_dominant = torch.zeros(2, n_tokens, dtype=torch.bool).scatter_(1, dominant_idx, True)
        for b in range(2):
            remaining = (~is_dominant[b]).nonzero().flatten()
            keys[b, remaining[10]] = keys[b, remaining[5]] * 2.0  # target 2: target 1's unit key, bit for bit
            keys[b, remaining[25]] = keys[b, remaining[5]] * 4.0  # target 5 as well
        tokens, triton_dominant_idx = vz.zip_tokens(hidden, scores, k_dom, k_ctx, keys, backend="triton")
        for b in range(2):
            remaining = (~is_dominant[b]).nonzero().flatten()
            assert torch.equal(tokens[b, k_dom + 2], hidden[b, remaining[10]])  # nothing merged into it
            assert torch.equal(tokens[b, k_dom + 5], hidden[b, remaining[25]])
            assert not torch.equal(tokens[b, k_dom + 1], hidden[b, remaining[5]])  # target 1 took them
        inputs = dict(hidden=hidden, attn=scores, k_dom=k_dom, k_ctx=k_ctx, keys=keys, has_cls=True)
        assert_matches_reference(tokens, triton_dominant_idx, inputs)

    def test_zero_keys_normalise_to_zero(self):
        inputs = make_inputs(ZipCase(2, 45, 20, 4, 8, 7, 5), torch.float32, seed=5)
        inputs["keys"][:, ::3] = 0.0
        inputs["keys"][:, 1::3] = -0.0
        tokens, dominant_idx = vz.zip_tokens(**inputs, backend="triton")
        assert torch.isfinite(tokens).all()
        assert_matches_reference(tokens, dominant_idx, inputs)

    @pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")  # numpy's inf / inf
    def test_nan_similarities_rank_last(self):
        """An infinite key channel makes a unit key NaN there, so its similarities are NaN."""
        inputs = make_inputs(ZipCase(2, 45, 20, 4, 8, 7, 5), torch.float32, seed=12)
        inputs["keys"][:, 10:40:4, 3] = float("inf")
        tokens, dominant_idx = vz.zip_tokens(**inputs, backend="triton")
        assert_matches_reference(tokens, dominant_idx, inputs)

    def test_non_finite_scores_rank_last(self):
        gen = torch.Generator().manual_seed(6)
        scores = torch.rand(2, 30, generator=gen)
        nan, inf = float("nan"), float("inf")
        scores[0, 3], scores[0, 9], scores[1, 1], scores[1, 28] = nan, inf, -inf, nan
        hidden = torch.randn(2, 30, 12, generator=gen)
        _, dominant_idx = vz.zip_tokens(hidden, scores, 27, 0, has_cls=False, backend="triton")
        for b, bad in ((0, {3, 9}), (1, {1, 28})):
            finite = sorted((j for j in range(30) if j not in bad), key=lambda j: (-scores[b, j].item(), j))
            assert dominant_idx[b].tolist() == sorted(finite[:27])
        _, all_idx = vz.zip_tokens(hidden, scores, 30, 0, has_cls=False, backend="triton")
        assert all_idx.tolist() == [list(range(30))] * 2
        rows = scores[:, None, :].repeat(1, 3, 1)  # per-head rows: the NaN reaches the summed score
        tokens, dominant_idx = vz.zip_tokens(hidden, rows, 9, 4, has_cls=True, backend="triton")
        inputs = dict(hidden=hidden, attn=rows, k_dom=9, k_ctx=4, keys=None, has_cls=True)
        assert_matches_reference(tokens, dominant_idx, inputs)

    def test_deterministic(self):
        case = ZipCase(2, 70, 64, 4, 16, 9, 7, attn_layout="full", key_layout="heads")
        inputs = make_inputs(case, torch.bfloat16, seed=8)
        first = vz.zip_tokens(**inputs, backend="triton")
        second = vz.zip_tokens(**inputs, backend="triton")
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])

    def test_non_contiguous_inputs(self):
        case = ZipCase(3, 70, 48, 4, 16, 9, 7, attn_layout="full", key_layout="heads")
        inputs = make_inputs(case, torch.float16, seed=9)
        strided = dict(inputs)
        strided["hidden"] = inputs["hidden"].transpose(1, 2).contiguous().transpose(1, 2)
        strided["attn"] = inputs["attn"].transpose(2, 3).contiguous().transpose(2, 3)
        strided["keys"] = inputs["keys"].permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
        assert not any(strided[k].is_contiguous() for k in ("hidden", "attn", "keys"))
        tokens, dominant_idx = vz.zip_tokens(**strided, backend="triton")
        assert_matches_reference(tokens, dominant_idx, inputs)
        sliced = dict(inputs, has_cls=False, keys=None)
        sliced["hidden"] = torch.randn(3, 70, 96, dtype=torch.float16)[:, :, ::2]
        sliced["attn"] = torch.rand(3, 8, 70)[:, ::2]
        assert_matches_reference(*vz.zip_tokens(**sliced, backend="triton"), sliced)

    @pytest.mark.parametrize("attn_dtype, key_dtype", [(torch.float32, torch.float16), (torch.float16, torch.float32)])
    def test_mixed_dtypes(self, attn_dtype, key_dtype):
        inputs = make_inputs(ZipCase(2, 65, 40, 4, 16, 9, 6, key_layout="heads"), torch.bfloat16, seed=10)
        inputs["attn"] = inputs["attn"].to(attn_dtype)
        inputs["keys"] = inputs["keys"].to(key_dtype)
        assert_matches_reference(*vz.zip_tokens(**inputs, backend="triton"), inputs)

    def test_empty_batch(self):
        tokens, dominant_idx = vz.zip_tokens(torch.randn(0, 20, 8), torch.rand(0, 4, 20), 5, 3, backend="triton")
        assert tokens.shape == (0, 8, 8) and dominant_idx.shape == (0, 5)


@pytest.mark.cuda
@pytest.mark.skipif(triton_interpreter_on(), reason="TestInterpreted runs in this process")
def test_interpreted_in_subprocess():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", __file__]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_cpu_tensors_need_the_interpreter():
    code = (
        "import torch, visionzip_kernels as vz\n"
        "vz.zip_tokens(torch.randn(1, 5, 4), torch.rand(1, 5), 2, 1, backend='triton')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=without_interpreter(), capture_output=True, text=True)
    assert result.returncode != 0
    assert "ValueError: zip_tokens: backend='triton' is not available on cpu" in result.stderr
    assert "TRITON_INTERPRET=1" in result.stderr


GPU_BUILD = """
import re
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from visionzip_kernels.triton.zip_tokens_kernels import apply_kernel, plan_kernel

def ptx(kernel, pointers, constexprs):
    signature = {n: "constexpr" if n in constexprs else pointers.get(n, "i32") for n in kernel.arg_names}
    positions = {(kernel.arg_names.index(n),): v for n, v in constexprs.items()}
    source = ASTSource(kernel, signature, constexprs=positions)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm["ptx"]

plan = ptx(
    plan_kernel,
    {"attn_ptr": "*bf16", "key_ptr": "*fp16", "dominant_ptr": "*i64", "route_ptr": "*i32", "target_ptr": "*i32"},
    dict(ATTN_LAYOUT=1, ATTN_HEADS=4, HAS_CLS=True, KEY_HEADS=4, BLOCK_N=1024, BLOCK_M=128, BLOCK_T=16),
)
assert not re.search(r"\\bfma\\.", plan), "a fused multiply-add in the decision kernel"
assert not re.search(r"\\bmul\\.f32", plan), "a product the assembler may contract"
assert "mul.rn.f32" in plan and "div.rn.f32" in plan and "sqrt.rn.f32" in plan and ".ftz" not in plan
apply = ptx(
    apply_kernel,
    {"hidden_ptr": "*bf16", "route_ptr": "*i32", "target_ptr": "*i32", "out_ptr": "*bf16"},
    dict(HAS_CONTEXT=True, BLOCK_J=64, BLOCK_C=128, BLOCK_T=16),
)
assert "mma" in apply
"""


def test_gpu_build_rounds_every_product_and_sum_alone():
    """Compiled for an H100 (sm_90, here without a GPU) with FP fusion on by default: the plan
    kernel's products, quotients and roots are correctly rounded PTX instructions, none fused."""
    env = {**without_interpreter(), "TRITON_DEFAULT_FP_FUSION": "1"}
    result = subprocess.run([sys.executable, "-c", GPU_BUILD], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
