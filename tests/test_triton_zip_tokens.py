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
from dataclasses import replace

import pytest
import torch
from varlen_cases import assert_zip_varlen_matches_reference, make_packed
from zip_cases import DTYPES, EDGE_CASES, SMALL_CASES, ZipCase, assert_matches_reference, make_inputs

import visionzip_kernels as vz
from visionzip_kernels.backends import triton_interpreter_on
from visionzip_kernels.ops.zip_tokens import reference
from visionzip_kernels.ops.zip_tokens.triton import (
    LaunchConfig,
    attn_rows,
    cuda_launch_config,
    interpreter_launch_config,
    launch_apply,
    launch_plan,
)
from visionzip_kernels.ops.zip_tokens_varlen.triton import launch_zip_tokens_varlen


def seed_of(case: ZipCase) -> int:
    return zlib.crc32(str(case).encode()) % 1000


def without_interpreter() -> dict:
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def interpreted_args(inputs: dict) -> list:
    return [inputs[k] for k in ("hidden", "attn", "k_dom", "k_ctx", "keys", "has_cls")]


def reference_workspaces(inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference plan in the Triton plan's encoding: ``(destination [B, N], targets [B, k_ctx])``."""
    plan = reference.plan_zip(
        inputs["attn"], reference.merge_metric(inputs["hidden"], inputs["keys"]),
        inputs["k_dom"], inputs["k_ctx"], inputs["has_cls"],
    )
    batch, n_tokens, _ = inputs["hidden"].shape
    destination = torch.full((batch, n_tokens), 99, dtype=torch.int32)
    slots = torch.arange(inputs["k_dom"], dtype=torch.int32).expand(batch, -1)
    destination.scatter_(1, plan.dominant_idx, -2 - slots)
    destination.scatter_(1, plan.target_idx, -1)
    destination.scatter_(1, plan.merge_idx, plan.merge_assign.int())
    return destination, plan.target_idx.int()


def assert_plan_is_the_reference(plan, inputs: dict) -> None:
    """The whole plan (every token's role and target) equals the reference's, bit for bit."""
    destination, targets = reference_workspaces(inputs)
    assert torch.equal(plan.destination, destination), "destination differs from the reference plan"
    assert torch.equal(plan.targets[:, : inputs["k_ctx"]], targets), "targets differ from the reference plan"


def tie_heavy_inputs() -> dict:
    """Scores and keys from a few levels (ties everywhere), signed zeros, NaN and infinite scores."""
    gen = torch.Generator().manual_seed(21)
    scores = torch.randint(0, 4, (2, 90), generator=gen).float() / 4
    scores[:, 30:50] = -scores[:, 30:50]
    scores[0, 7], scores[0, 60], scores[1, 2], scores[1, 44] = float("nan"), float("inf"), float("-inf"), float("nan")
    keys = torch.randint(-1, 2, (2, 90, 6), generator=gen).float()
    keys[:, ::9] = 0.0
    hidden = torch.randn(2, 90, 40, generator=gen)
    return dict(hidden=hidden, attn=scores, k_dom=23, k_ctx=35, keys=keys, has_cls=True)


TILING_INPUTS = {
    "nocls-full-heads": lambda: make_inputs(
        ZipCase(1, 70, 96, 4, 16, 9, 21, has_cls=False, attn_layout="full", key_layout="heads"), torch.float16, seed=11
    ),
    "cls-hidden-metric": lambda: make_inputs(
        ZipCase(1, 53, 24, 3, 8, 7, 18, key_layout="none"), torch.bfloat16, seed=12
    ),
    "ties-and-non-finite": tie_heavy_inputs,
}


def packed_tiling_inputs(dtype: torch.dtype, with_keys: bool) -> tuple[dict, list[int], list[int]]:
    """A packed batch for the varlen kernels: a one-token segment, a segment without contextual
    tokens, one with two target blocks (k_ctx = 19) and sizes that are not powers of two; ties."""
    sizes = (37, 1, 90, 13, 5)
    packed = make_packed(sizes, 24, 6, dtype, seed=13, with_keys=with_keys)
    packed["importance"][40:60] = 0.5
    packed["importance"][[3, 45]] = float("nan")
    return packed, [10, 1, 30, 5, 2], [4, 0, 19, 1, 3]


def tilings(n_tokens: int, width: int, k_ctx: int) -> list[LaunchConfig]:
    """Launch configurations that split the work every way: 1 to 8 radix bits, token blocks of 8 to
    64, target tiles of 4 to 32, channel blocks of 16 to 64, and the GPU's tiles at batch 1 and 512."""
    base = interpreter_launch_config(n_tokens, width, k_ctx)
    return [
        replace(base, radix_bits=1, column_block=16, block_m=32, assign_block_t=4, block_c=16, block_j=16),
        replace(base, radix_bits=8, column_block=64, block_m=8, assign_block_t=32, block_c=32, block_j=64),
        replace(base, radix_bits=4, column_block=64, block_m=64, assign_block_t=32, block_c=64, apply_block_t=32),
        cuda_launch_config(132, 1, n_tokens, width, k_ctx),
        cuda_launch_config(132, 512, n_tokens, width, k_ctx),
    ]


def one_dtype_per_case(cases: list[ZipCase]) -> list[tuple[ZipCase, torch.dtype]]:
    """Each case with one dtype, rotated so that within every size and CLS setting each ``attn``
    layout and each key layout meets every dtype (a Latin square over the 3 x 3 layouts): the
    interpreter is slow, and the full cross product runs on the C++ backend and the GPU."""
    return [(case, DTYPES[(i + i // 3) % len(DTYPES)]) for i, case in enumerate(cases)]


@pytest.mark.skipif(
    not triton_interpreter_on(), reason="CUDA machine: test_interpreted_in_subprocess runs these"
)
class TestInterpreted:
    @pytest.mark.parametrize("case, dtype", one_dtype_per_case(SMALL_CASES + EDGE_CASES), ids=str)
    def test_matches_reference(self, case, dtype):
        inputs = make_inputs(case, dtype, seed=seed_of(case))
        assert_matches_reference(*vz.zip_tokens(**inputs, backend="triton"), inputs)

    @pytest.mark.parametrize(
        "case", [ZipCase(1, 577, 1024, 16, 64, 54, 10), ZipCase(1, 729, 1152, 16, 72, 54, 10, has_cls=False)], ids=str
    )
    def test_model_sizes_with_gpu_tiles(self, case):
        """CLIP-L/336 and SigLIP geometries, launched with the tiles an H100 (132 SMs) gets."""
        inputs = make_inputs(case, torch.bfloat16, seed=seed_of(case))
        config = cuda_launch_config(132, case.batch, case.n_tokens, case.width, case.k_ctx)
        plan = launch_plan(*interpreted_args(inputs), config)
        assert_plan_is_the_reference(plan, inputs)
        tokens = launch_apply(inputs["hidden"], plan, case.k_dom, case.k_ctx, config)
        assert_matches_reference(tokens, plan.dominant_idx, inputs)

    @pytest.mark.parametrize("name", sorted(TILING_INPUTS))
    def test_any_tiling_gives_the_same_plan(self, name):
        """Column sums, the selection, the assignment and the apply split every way decide alike:
        the plan is the reference's bit for bit, and the tokens are within the tolerance."""
        inputs = TILING_INPUTS[name]()
        _, n_tokens, width = inputs["hidden"].shape
        for config in tilings(n_tokens, width, inputs["k_ctx"]):
            plan = launch_plan(*interpreted_args(inputs), config)
            assert_plan_is_the_reference(plan, inputs)
            tokens = launch_apply(inputs["hidden"], plan, inputs["k_dom"], inputs["k_ctx"], config)
            assert_matches_reference(tokens, plan.dominant_idx, inputs)

    @pytest.mark.parametrize("dtype,with_keys", [(torch.float32, True), (torch.bfloat16, False)], ids=str)
    def test_varlen_segments_split_every_way_decide_alike(self, dtype, with_keys):
        """The varlen kernels, one segment per image, with every tiling: the kept indices are the
        reference's bit for bit and the tokens within the tolerance (a wrong assignment is not)."""
        packed, k_dom, k_ctx = packed_tiling_inputs(dtype, with_keys)
        args = (packed["hidden"], packed["importance"], packed["cu_seqlens"], packed["seqlens"], k_dom, k_ctx)
        for config in tilings(max(packed["seqlens"]), packed["hidden"].shape[1], max(k_ctx)):
            outputs = launch_zip_tokens_varlen(*args, packed["keys"], config)
            assert_zip_varlen_matches_reference(outputs, packed, k_dom, k_ctx)

    @pytest.mark.parametrize("column_block", [8, 32])
    def test_column_sums_are_the_reference_rows(self, column_block):
        """A full map without CLS: per-head column sums over queries, bit for bit, any column block."""
        attn = make_inputs(ZipCase(2, 45, 8, 3, 4, 5, 2, has_cls=False, attn_layout="full"), torch.bfloat16)["attn"]
        rows = attn_rows(attn, False, column_block)[0]
        assert torch.equal(rows, reference.ordered_sum(attn, dim=2))


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
from visionzip_kernels.ops.zip_tokens.triton import cuda_launch_config
from visionzip_kernels.ops.zip_tokens.triton_kernels import apply_kernel, assign_kernel, column_sum_kernel, select_kernel
from visionzip_kernels.ops.zip_tokens_varlen import triton_kernels as varlen

def ptx(kernel, pointers, constexprs, aligned=(), **options):
    # PTX for sm_90; `aligned` names the arguments that are multiples of 16, as the JIT marks them.
    signature = {n: "constexpr" if n in constexprs else pointers.get(n, "i32") for n in kernel.arg_names}
    positions = {(kernel.arg_names.index(n),): v for n, v in constexprs.items()}
    attrs = {(kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in (*pointers, *aligned)}
    source = ASTSource(kernel, signature, constexprs=positions, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options).asm

def assert_unfused(name, code):
    assert not re.search(r"\\bfma\\.", code), f"a fused multiply-add in {name}"
    assert not re.search(r"\\bmul\\.f32", code), f"a product the assembler may contract in {name}"
    assert ".ftz" not in code, f"flushed subnormals in {name}"

columns = ptx(column_sum_kernel, {"attn_ptr": "*bf16", "rows_ptr": "*fp32"}, dict(BLOCK_N=128))["ptx"]
assert_unfused("column_sum_kernel", columns)
select = ptx(
    select_kernel,
    {"attn_ptr": "*bf16", "dominant_ptr": "*i64", "destination_ptr": "*i32", "target_ptr": "*i32"},
    dict(ATTN_LAYOUT=1, ATTN_HEADS=4, HAS_CLS=True, BLOCK_N=1024, RADIX_BITS=4),
)["ptx"]
assert_unfused("select_kernel", select)
assign = ptx(
    assign_kernel,
    {"key_ptr": "*fp16", "destination_ptr": "*i32", "target_ptr": "*i32"},
    dict(KEY_HEADS=4, BLOCK_M=32, BLOCK_T=16, UNROLL=16),
)["ptx"]
assert_unfused("assign_kernel", assign)
assert "mul.rn.f32" in assign and "div.rn.f32" in assign and "sqrt.rn.f32" in assign
# Contiguous bf16 rows, as the JIT specialises them (unit channel stride, 16-aligned sizes), with the
# tiles of CLIP-L/336 at batch 256: the row stream is 16-byte asynchronous copies, two or more row
# tiles in flight, into tensor-core MMAs.
config = cuda_launch_config(132, 256, 577, 1024, 10)
apply = ptx(
    apply_kernel,
    {"hidden_ptr": "*bf16", "dominant_ptr": "*i64", "destination_ptr": "*i32", "target_ptr": "*i32", "out_ptr": "*bf16"},
    dict(HAS_CONTEXT=True, BLOCK_J=config.block_j, BLOCK_C=config.block_c, BLOCK_T=config.apply_block_t,
         hidden_channel_stride=1),
    aligned=("hidden_batch_stride", "hidden_token_stride", "out_batch_stride", "out_token_stride", "width"),
    num_warps=config.apply_warps, num_stages=config.apply_stages,
)
assert "mma" in apply["ptx"]
assert re.search(r"cp\\.async\\.cg\\.shared\\.global[^;]*, 0x10", apply["ptx"]), "rows not in 16-byte async copies"
row_tile = f"x{config.block_j}x{config.block_c}xbf16"
buffers = [int(n) for n in re.findall(r"memdesc<(\\d+)" + row_tile, apply["ttgir"])]
assert buffers and max(buffers) >= 2, f"fewer than two row tiles in flight: {buffers}"

# The varlen apply wraps the same row stream in its segment's bounds: still 16-byte copies, two tiles in flight.
segments = {"cu_ptr": "*i64", "budget_ptr": "*i64", "destination_ptr": "*i32", "target_ptr": "*i32"}
varlen_apply = ptx(
    varlen.apply_kernel,
    {"hidden_ptr": "*bf16", "kept_ptr": "*i64", "target_row_ptr": "*i32", "out_ptr": "*bf16", **segments},
    dict(BLOCK_J=config.block_j, BLOCK_C=config.block_c, BLOCK_T=config.apply_block_t, hidden_channel_stride=1),
    aligned=("hidden_token_stride", "width"),
    num_warps=config.apply_warps, num_stages=config.apply_stages,
)
assert "mma" in varlen_apply["ptx"]
assert re.search(r"cp\\.async\\.cg\\.shared\\.global[^;]*, 0x10", varlen_apply["ptx"]), "varlen rows: not 16 B"
buffers = [int(n) for n in re.findall(r"memdesc<(\\d+)" + row_tile, varlen_apply["ttgir"])]
assert buffers and max(buffers) >= 2, f"fewer than two varlen row tiles in flight: {buffers}"
"""


def test_gpu_build_rounds_every_product_and_sum_alone():
    """Compiled for an H100 (sm_90, here without a GPU) with FP fusion on by default: the plan
    kernels' products, quotients and roots are correctly rounded PTX instructions, none fused; the
    apply's row stream, with the large-batch tiles, is pipelined 16-byte copies into MMAs."""
    env = {**without_interpreter(), "TRITON_DEFAULT_FP_FUSION": "1"}
    result = subprocess.run([sys.executable, "-c", GPU_BUILD], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
