"""The C++ CPU backend (and the automatic choice on CPU) against the reference."""
import zlib

import pytest
import torch
from zip_cases import DTYPES, EDGE_CASES, MODEL_CASES, SMALL_CASES, ZipCase, assert_matches_reference, make_inputs

import visionzip_kernels as vz

CASES = MODEL_CASES + SMALL_CASES + EDGE_CASES


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_cpu_matches_reference(case, dtype):
    inputs = make_inputs(case, dtype, seed=zlib.crc32(str(case).encode()) % 1000)
    assert_matches_reference(*vz.zip_tokens(**inputs, backend="cpu"), inputs)


@pytest.mark.parametrize("batch", [1, 2, 5, 8])
def test_batch_sizes(batch):
    inputs = make_inputs(ZipCase(batch, 577, 64, 16, 64, 54, 10), torch.bfloat16, seed=batch)
    assert_matches_reference(*vz.zip_tokens(**inputs, backend="cpu"), inputs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_torch_ops_entry_point_chooses_cpu(dtype):
    inputs = make_inputs(ZipCase(3, 61, 40, 4, 8, 9, 5, key_layout="heads"), dtype, seed=7)
    tokens, dominant_idx = torch.ops.visionzip.zip_tokens(
        inputs["hidden"], inputs["attn"], inputs["k_dom"], inputs["k_ctx"], inputs["keys"], inputs["has_cls"]
    )
    assert_matches_reference(tokens, dominant_idx, inputs)
    expected = vz.zip_tokens(**inputs, backend="cpu")
    assert torch.equal(tokens, expected[0]) and torch.equal(dominant_idx, expected[1])
