"""The contract's rules, on every backend: those that run on CPU tensors here, and every CUDA
backend where there is a GPU (marked ``cuda``).

Ties to the lower index and the lower target, signed zeros, non-finite scores and similarities
ranked last, zero keys, determinism, strided and mixed-dtype inputs, an empty batch. The expected
answers are written from the rules (sorted() on scores) where that is simple, and are the
reference's otherwise. On CPU the Triton backend runs through its interpreter (TRITON_INTERPRET=1).
Inputs are made on the CPU; each backend gets them on its device and returns its outputs to the CPU.
"""
from dataclasses import dataclass

import pytest
import torch
from zip_cases import ZipCase, assert_matches_reference, make_inputs

import visionzip_kernels as vz


@dataclass(frozen=True)
class DeviceBackend:
    device: str
    name: str

    def zip_tokens(self, *args, **kwargs):
        """``vz.zip_tokens`` with this backend on this device, outputs back on the CPU."""
        moved = [a.to(self.device) if isinstance(a, torch.Tensor) else a for a in args]
        kw = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        tokens, dominant_idx = vz.zip_tokens(*moved, **kw, backend=self.name)
        return tokens.cpu(), dominant_idx.cpu()


BACKENDS = [pytest.param(DeviceBackend("cpu", name), id=f"cpu-{name}") for name in vz.available_backends("cpu")] + [
    pytest.param(DeviceBackend("cuda", name), id=f"cuda-{name}", marks=pytest.mark.cuda)
    for name in vz.available_backends("cuda")
]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def test_score_ties_go_to_the_lower_index(backend):
    gen = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 4, (3, 40), generator=gen).float()  # four levels: ties everywhere
    hidden = torch.randn(3, 40, 16, generator=gen)
    for has_cls in (True, False):
        tokens, dominant_idx = backend.zip_tokens(hidden, scores, 13, 3, has_cls=has_cls)
        for b in range(3):
            first = 1 if has_cls else 0
            ranked = sorted(range(first, 40), key=lambda j: (-scores[b, j].item(), j))
            assert dominant_idx[b].tolist() == sorted(([0] if has_cls else []) + ranked[: 13 - first])
        inputs = dict(hidden=hidden, attn=scores, k_dom=13, k_ctx=3, keys=None, has_cls=has_cls)
        assert_matches_reference(tokens, dominant_idx, inputs)

def test_signed_zero_scores_tie(backend):
    scores = torch.tensor([[0.5, -0.0, 0.0, -0.0, 0.25, 0.0]])
    hidden = torch.randn(1, 6, 8)
    _, dominant_idx = backend.zip_tokens(hidden, scores, 4, 0, has_cls=False)
    assert dominant_idx.tolist() == [[0, 1, 2, 4]]

def test_similarity_ties_go_to_the_lower_target(backend):
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
    tokens, backend_dominant_idx = backend.zip_tokens(hidden, scores, k_dom, k_ctx, keys)
    for b in range(2):
        remaining = (~is_dominant[b]).nonzero().flatten()
        assert torch.equal(tokens[b, k_dom + 2], hidden[b, remaining[10]])  # nothing merged into it
        assert torch.equal(tokens[b, k_dom + 5], hidden[b, remaining[25]])
        assert not torch.equal(tokens[b, k_dom + 1], hidden[b, remaining[5]])  # target 1 took them
    inputs = dict(hidden=hidden, attn=scores, k_dom=k_dom, k_ctx=k_ctx, keys=keys, has_cls=True)
    assert_matches_reference(tokens, backend_dominant_idx, inputs)

def test_zero_keys_normalise_to_zero(backend):
    inputs = make_inputs(ZipCase(2, 45, 20, 4, 8, 7, 5), torch.float32, seed=5)
    inputs["keys"][:, ::3] = 0.0
    inputs["keys"][:, 1::3] = -0.0
    tokens, dominant_idx = backend.zip_tokens(**inputs)
    assert torch.isfinite(tokens).all()
    assert_matches_reference(tokens, dominant_idx, inputs)

@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")  # numpy's inf / inf
def test_nan_similarities_rank_last(backend):
    """An infinite key channel makes a unit key NaN there, so its similarities are NaN."""
    inputs = make_inputs(ZipCase(2, 45, 20, 4, 8, 7, 5), torch.float32, seed=12)
    inputs["keys"][:, 10:40:4, 3] = float("inf")
    tokens, dominant_idx = backend.zip_tokens(**inputs)
    assert_matches_reference(tokens, dominant_idx, inputs)

def test_non_finite_scores_rank_last(backend):
    gen = torch.Generator().manual_seed(6)
    scores = torch.rand(2, 30, generator=gen)
    nan, inf = float("nan"), float("inf")
    scores[0, 3], scores[0, 9], scores[1, 1], scores[1, 28] = nan, inf, -inf, nan
    hidden = torch.randn(2, 30, 12, generator=gen)
    _, dominant_idx = backend.zip_tokens(hidden, scores, 27, 0, has_cls=False)
    for b, bad in ((0, {3, 9}), (1, {1, 28})):
        finite = sorted((j for j in range(30) if j not in bad), key=lambda j: (-scores[b, j].item(), j))
        assert dominant_idx[b].tolist() == sorted(finite[:27])
    _, all_idx = backend.zip_tokens(hidden, scores, 30, 0, has_cls=False)
    assert all_idx.tolist() == [list(range(30))] * 2
    rows = scores[:, None, :].repeat(1, 3, 1)  # per-head rows: the NaN reaches the summed score
    tokens, dominant_idx = backend.zip_tokens(hidden, rows, 9, 4, has_cls=True)
    inputs = dict(hidden=hidden, attn=rows, k_dom=9, k_ctx=4, keys=None, has_cls=True)
    assert_matches_reference(tokens, dominant_idx, inputs)

def test_deterministic(backend):
    case = ZipCase(2, 70, 64, 4, 16, 9, 7, attn_layout="full", key_layout="heads")
    inputs = make_inputs(case, torch.bfloat16, seed=8)
    first = backend.zip_tokens(**inputs)
    second = backend.zip_tokens(**inputs)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])

def test_non_contiguous_inputs(backend):
    case = ZipCase(3, 70, 48, 4, 16, 9, 7, attn_layout="full", key_layout="heads")
    inputs = make_inputs(case, torch.float16, seed=9)
    strided = dict(inputs)
    strided["hidden"] = inputs["hidden"].transpose(1, 2).contiguous().transpose(1, 2)
    strided["attn"] = inputs["attn"].transpose(2, 3).contiguous().transpose(2, 3)
    strided["keys"] = inputs["keys"].permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    assert not any(strided[k].is_contiguous() for k in ("hidden", "attn", "keys"))
    tokens, dominant_idx = backend.zip_tokens(**strided)
    assert_matches_reference(tokens, dominant_idx, inputs)
    sliced = dict(inputs, has_cls=False, keys=None)
    sliced["hidden"] = torch.randn(3, 70, 96, dtype=torch.float16)[:, :, ::2]
    sliced["attn"] = torch.rand(3, 8, 70)[:, ::2]
    assert_matches_reference(*backend.zip_tokens(**sliced), sliced)

@pytest.mark.parametrize("attn_dtype, key_dtype", [(torch.float32, torch.float16), (torch.float16, torch.float32)])
def test_mixed_dtypes(backend, attn_dtype, key_dtype):
    inputs = make_inputs(ZipCase(2, 65, 40, 4, 16, 9, 6, key_layout="heads"), torch.bfloat16, seed=10)
    inputs["attn"] = inputs["attn"].to(attn_dtype)
    inputs["keys"] = inputs["keys"].to(key_dtype)
    assert_matches_reference(*backend.zip_tokens(**inputs), inputs)

def test_empty_batch(backend):
    tokens, dominant_idx = backend.zip_tokens(torch.randn(0, 20, 8), torch.rand(0, 4, 20), 5, 3)
    assert tokens.shape == (0, 8, 8) and dominant_idx.shape == (0, 5)
