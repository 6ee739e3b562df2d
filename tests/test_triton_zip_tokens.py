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
from visionzip_kernels.backends import triton_interpreter_on
from visionzip_kernels.ops.zip_tokens.triton import LaunchConfig, cuda_launch_config, launch_zip_tokens


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
        assert config.plan_programs > 1 and config.block_m == 128
        args = [inputs[k] for k in ("hidden", "attn", "k_dom", "k_ctx", "keys", "has_cls")]
        assert_matches_reference(*launch_zip_tokens(*args, config), inputs)

    def test_any_tiling_gives_the_same_indices(self):
        """Plan programs, token blocks, target blocks and channel blocks of every size decide alike."""
        case = ZipCase(1, 70, 96, 4, 16, 9, 21, has_cls=False, attn_layout="full", key_layout="heads")
        inputs = make_inputs(case, torch.float16, seed=11)
        args = [inputs[k] for k in ("hidden", "attn", "k_dom", "k_ctx", "keys", "has_cls")]
        tiny = LaunchConfig(
            plan_programs=3, block_m=16, plan_block_t=4, plan_warps=1, block_c=16, block_j=16, apply_block_t=16, apply_warps=1
        )
        configs = [tiny, cuda_launch_config(132, 1, 70, 96, 21), None]
        results = [launch_zip_tokens(*args, c) if c else vz.zip_tokens(**inputs, backend="triton") for c in configs]
        for tokens, dominant_idx in results:
            assert_matches_reference(tokens, dominant_idx, inputs)
            assert torch.equal(dominant_idx, results[0][1])


@pytest.mark.cuda
@pytest.mark.skipif(triton_interpreter_on(), reason="TestInterpreted runs in this process")
def test_interpreted_in_subprocess():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    rules = os.path.join(os.path.dirname(__file__), "test_contract_rules.py")
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", __file__, rules]
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
from visionzip_kernels.ops.zip_tokens.triton_kernels import apply_kernel, plan_kernel

def ptx(kernel, pointers, constexprs):
    signature = {n: "constexpr" if n in constexprs else pointers.get(n, "i32") for n in kernel.arg_names}
    positions = {(kernel.arg_names.index(n),): v for n, v in constexprs.items()}
    source = ASTSource(kernel, signature, constexprs=positions)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm["ptx"]

plan = ptx(
    plan_kernel,
    {"attn_ptr": "*bf16", "key_ptr": "*fp16", "dominant_ptr": "*i64", "destination_ptr": "*i32", "target_ptr": "*i32"},
    dict(ATTN_LAYOUT=1, ATTN_HEADS=4, HAS_CLS=True, KEY_HEADS=4, BLOCK_N=1024, BLOCK_M=128, BLOCK_T=16),
)
assert not re.search(r"\\bfma\\.", plan), "a fused multiply-add in the decision kernel"
assert not re.search(r"\\bmul\\.f32", plan), "a product the assembler may contract"
assert "mul.rn.f32" in plan and "div.rn.f32" in plan and "sqrt.rn.f32" in plan and ".ftz" not in plan
apply = ptx(
    apply_kernel,
    {"hidden_ptr": "*bf16", "destination_ptr": "*i32", "target_ptr": "*i32", "out_ptr": "*bf16"},
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
