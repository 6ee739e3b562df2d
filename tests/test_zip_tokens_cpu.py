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


def test_score_ties_go_to_the_lower_index():
    gen = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 4, (4, 50), generator=gen).float()  # four levels: ties everywhere
    hidden = torch.randn(4, 50, 24, generator=gen)
    for has_cls in (True, False):
        _, dominant_idx = vz.zip_tokens(hidden, scores, 17, 3, has_cls=has_cls, backend="cpu")
        for b in range(4):
            first = 1 if has_cls else 0
            ranked = sorted(range(first, 50), key=lambda j: (-scores[b, j].item(), j))
            expected = sorted(([0] if has_cls else []) + ranked[: 17 - first])
            assert dominant_idx[b].tolist() == expected


def test_similarity_ties_go_to_the_lower_target():
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
    tokens, cpu_dominant_idx = vz.zip_tokens(hidden, scores, k_dom, k_ctx, keys, backend="cpu")
    for b in range(2):
        remaining = (~is_dominant[b]).nonzero().flatten()
        assert torch.equal(tokens[b, k_dom + 2], hidden[b, remaining[10]])  # nothing merged into it
        assert not torch.equal(tokens[b, k_dom + 1], hidden[b, remaining[5]])  # target 1 took them
    inputs = dict(hidden=hidden, attn=scores, k_dom=k_dom, k_ctx=k_ctx, keys=keys, has_cls=True)
    assert_matches_reference(tokens, cpu_dominant_idx, inputs)


def test_zero_keys_normalise_to_zero():
    inputs = make_inputs(ZipCase(2, 45, 20, 4, 8, 7, 5), torch.float32, seed=5)
    inputs["keys"][:, ::3] = 0.0
    tokens, dominant_idx = vz.zip_tokens(**inputs, backend="cpu")
    assert torch.isfinite(tokens).all()
    assert_matches_reference(tokens, dominant_idx, inputs)


def test_non_finite_scores_rank_last():
    gen = torch.Generator().manual_seed(6)
    scores = torch.rand(2, 30, generator=gen)
    scores[0, 3], scores[0, 9], scores[1, 1], scores[1, 28] = float("nan"), float("inf"), float("-inf"), float("nan")
    hidden = torch.randn(2, 30, 12, generator=gen)
    _, dominant_idx = vz.zip_tokens(hidden, scores, 27, 0, has_cls=False, backend="cpu")
    for b, bad in ((0, {3, 9}), (1, {1, 28})):
        finite = sorted((j for j in range(30) if j not in bad), key=lambda j: (-scores[b, j].item(), j))
        assert dominant_idx[b].tolist() == sorted(finite[:27])
    _, all_idx = vz.zip_tokens(hidden, scores, 30, 0, has_cls=False, backend="cpu")
    assert all_idx.tolist() == [list(range(30))] * 2


def test_deterministic():
    inputs = make_inputs(ZipCase(4, 577, 256, 16, 64, 54, 10, attn_layout="full"), torch.bfloat16, seed=8)
    first = vz.zip_tokens(**inputs, backend="cpu")
    second = vz.zip_tokens(**inputs, backend="cpu")
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_non_contiguous_inputs():
    inputs = make_inputs(ZipCase(3, 70, 48, 4, 16, 9, 7, attn_layout="full", key_layout="heads"), torch.float16, seed=9)
    strided = dict(inputs)
    strided["hidden"] = inputs["hidden"].transpose(1, 2).contiguous().transpose(1, 2)
    strided["attn"] = inputs["attn"].transpose(2, 3).contiguous().transpose(2, 3)
    strided["keys"] = inputs["keys"].permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    assert not any(strided[k].is_contiguous() for k in ("hidden", "attn", "keys"))
    tokens, dominant_idx = vz.zip_tokens(**strided, backend="cpu")
    assert_matches_reference(tokens, dominant_idx, inputs)


def test_mixed_dtypes():
    inputs = make_inputs(ZipCase(2, 65, 40, 4, 16, 9, 6, key_layout="heads"), torch.bfloat16, seed=10)
    inputs["attn"] = inputs["attn"].float()
    inputs["keys"] = inputs["keys"].half()
    assert_matches_reference(*vz.zip_tokens(**inputs, backend="cpu"), inputs)


def test_empty_batch():
    tokens, dominant_idx = vz.zip_tokens(torch.randn(0, 20, 8), torch.rand(0, 4, 20), 5, 3, backend="cpu")
    assert tokens.shape == (0, 8, 8) and dominant_idx.shape == (0, 5)
