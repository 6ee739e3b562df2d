"""The reference against independent implementations of the method.

With a CLS token: the published code's port (`visionzip_kernels.published`), on random inputs at
the paper's budgets. Without one (no published code exists): a per-token loop written from the
method's description, in float64.
"""
import pytest
import torch
from zip_cases import ZipCase, make_inputs

from visionzip_kernels.ops.zip_tokens import reference
from visionzip_kernels.testing.published import published_zip_tokens


@pytest.mark.parametrize("attn_layout", ["full", "rows"])
@pytest.mark.parametrize("k_dom,k_ctx", [(54, 10), (108, 20), (162, 30), (20, 7)])
def test_reference_agrees_with_published_code(k_dom, k_ctx, attn_layout):
    inputs = make_inputs(ZipCase(3, 577, 96, 16, 64, k_dom, k_ctx, attn_layout=attn_layout), torch.float32, seed=k_dom)
    tokens, dominant_idx = reference.zip_tokens(**inputs)
    published = published_zip_tokens(inputs["hidden"], inputs["attn"], k_dom, k_ctx, inputs["keys"])
    torch.testing.assert_close(dominant_idx, published[1], atol=0, rtol=0)
    torch.testing.assert_close(tokens, published[0], atol=1e-5, rtol=1e-5)


def loop_zip_tokens(hidden, attn, k_dom, k_ctx, keys):
    """VisionZip without a CLS token, one image, one token at a time, in float64."""
    n_tokens = hidden.shape[0]
    scores = [attn[:, :, j].double().mean().item() for j in range(n_tokens)]
    dominant = sorted(sorted(range(n_tokens), key=lambda j: (-scores[j], j))[:k_dom])
    remaining = [j for j in range(n_tokens) if j not in dominant]
    step = max(1, len(remaining) // k_ctx)
    targets = remaining[::step][:k_ctx]
    unit = torch.nn.functional.normalize(keys.double(), dim=-1)
    groups = {t: [] for t in targets}
    for j in remaining:
        if j not in targets:
            sims = [torch.dot(unit[j], unit[t]).item() for t in targets]
            groups[targets[sims.index(max(sims))]].append(j)
    contextual = [
        hidden[t].double() + (hidden[groups[t]].double().mean(0) if groups[t] else 0) for t in targets
    ]
    return torch.stack([hidden[j].double() for j in dominant] + contextual), torch.tensor(dominant)


@pytest.mark.parametrize("seed", range(3))
def test_reference_without_cls_agrees_with_token_loop(seed):
    inputs = make_inputs(ZipCase(2, 53, 24, 3, 10, 8, 6, has_cls=False, attn_layout="full"), torch.float32, seed=seed)
    tokens, dominant_idx = reference.zip_tokens(**inputs)
    for b in range(2):
        expected, expected_idx = loop_zip_tokens(
            inputs["hidden"][b], inputs["attn"][b], inputs["k_dom"], inputs["k_ctx"], inputs["keys"][b]
        )
        assert dominant_idx[b].tolist() == expected_idx.tolist()
        torch.testing.assert_close(tokens[b].double(), expected, atol=1e-5, rtol=1e-5)


def test_ordered_sum_is_left_to_right():
    x = torch.tensor([1e8, 1.0, -1e8, 1.0])  # float32: (1e8 + 1) == 1e8, so left-to-right gives 1
    assert reference.ordered_sum(x, dim=0).item() == 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_plan_is_applied_in_float32_and_rounded_once(dtype):
    """A 16-bit apply accumulates in float32 and rounds once: bit for bit the float32 apply of the
    same values rounded to the dtype, and within one rounding (plus float32 sums) of float64."""
    inputs = make_inputs(ZipCase(2, 40, 16, 2, 8, 6, 4), dtype, seed=1)
    hidden = inputs["hidden"]
    plan = reference.plan_zip(inputs["attn"], reference.merge_metric(hidden, inputs["keys"]), 6, 4, True)
    low = reference.apply_zip(hidden, plan)
    assert low.dtype == dtype
    assert torch.equal(low, reference.apply_zip(hidden.float(), plan).to(dtype))
    exact = reference.apply_zip(hidden.double(), plan)
    assert exact.dtype == torch.float64
    half_ulp = torch.finfo(dtype).eps / 2
    torch.testing.assert_close(low.double(), exact, atol=1e-6, rtol=half_ulp * 1.01)


def test_unit_keys_follow_the_contract_order_bit_for_bit():
    """normalise against numpy float32: squares summed in channel order, correctly rounded root and division."""
    import numpy as np

    metric = torch.randn(3, 50, 72, generator=torch.Generator().manual_seed(5)) * 3
    metric[0, 4] = 0.0
    values = metric.numpy()
    squares = np.zeros(values.shape[:-1], dtype=np.float32)
    for d in range(values.shape[-1]):
        squares = squares + values[..., d] * values[..., d]
    norm = np.sqrt(squares)[..., None]
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.where(norm > 0, values / norm, np.float32(0))
    assert np.array_equal(reference.normalise(metric).numpy(), expected)
