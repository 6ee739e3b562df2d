"""The varlen ops against real outputs of the published Qwen2.5-VL VisionZip port.

``tests/data/published_qwen25vl_visionzip.npz`` (``../shared/golden/README.md``) holds, for one image
per case, the last vision block's q and k ``[H, 4T, hd]`` in window order, ``window_index``, the
pooled statistic ``attn_mean`` ``[T]`` and keys ``attn_key``, the language model's input embeddings
and the published ``kept_mask`` and output embeddings. Agreement: kept indices exactly equal; scores
and keys within float32 rounding of a dense softmax (rtol 2e-5); embeddings within 1e-5.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

import visionzip_kernels as vz
from visionzip_kernels.backends import triton_interpreter_on
from visionzip_kernels.ops.attention_importance_varlen import available_backends as importance_backends
from visionzip_kernels.ops.zip_tokens_varlen import available_backends as zip_backends

GOLDEN = np.load(Path(__file__).parent / "data" / "published_qwen25vl_visionzip.npz")
CASES = sorted({key.split("/")[0] for key in GOLDEN.files})


def golden(case: str, name: str) -> torch.Tensor:
    return torch.from_numpy(GOLDEN[f"{case}/{name}"])


def image_span(case: str) -> slice:
    """The image tokens' positions in the prompt: after ``prefix`` tokens, ``T`` of them."""
    n_merged, prefix = int(golden(case, "meta")[0]), int(golden(case, "meta")[4])
    return slice(prefix, prefix + n_merged)


def test_golden_file_holds_the_three_cases():
    assert set(CASES) == {"grid14x14", "grid20x28", "odd"}
    for case in CASES:
        assert golden(case, "q").shape[1] == 4 * int(golden(case, "meta")[0])


# Triton's interpreter takes minutes on the 16-head cases: it runs on the 4-head one.
SCORE_CASES = [
    (case, backend)
    for case in CASES
    for backend in importance_backends("cpu")
    if case == "odd" or not (backend == "triton" and triton_interpreter_on())
]


@pytest.mark.parametrize("case,backend", SCORE_CASES)
def test_scores_from_q_and_k_are_attn_mean(case, backend):
    q, k = golden(case, "q").transpose(0, 1), golden(case, "k").transpose(0, 1)  # [4T, H, hd]
    cu_seqlens = torch.tensor([0, q.shape[0]], dtype=torch.int32)
    importance = vz.attention_importance_varlen(q, k, cu_seqlens, backend=backend)
    attn_mean = vz.pool_merge_units(importance, golden(case, "window_index"))
    torch.testing.assert_close(attn_mean, golden(case, "attn_mean"), rtol=2e-5, atol=0)


@pytest.mark.parametrize("case", CASES)
def test_pooled_keys_are_attn_key(case):
    k = golden(case, "k").transpose(0, 1)
    keys = vz.pool_merge_units(k, golden(case, "window_index")).mean(dim=1)
    torch.testing.assert_close(keys, golden(case, "attn_key")[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", zip_backends("cpu"))
@pytest.mark.parametrize("from_q_k", [False, True], ids=["golden-scores", "scores-from-q-k"])
@pytest.mark.parametrize("case", CASES)
def test_kept_mask_and_embeddings_are_published(case, from_q_k, backend):
    span = image_span(case)
    hidden = golden(case, "inputs_embeds")[0, span]
    if from_q_k:
        q, k = golden(case, "q").transpose(0, 1), golden(case, "k").transpose(0, 1)
        window_index = golden(case, "window_index")
        importance = vz.pool_merge_units(
            vz.attention_importance_varlen(q, k, torch.tensor([0, q.shape[0]])), window_index
        )
        keys = vz.pool_merge_units(k, window_index).mean(dim=1)
    else:
        importance, keys = golden(case, "attn_mean"), golden(case, "attn_key")[0]
    cu_seqlens = torch.tensor([0, hidden.shape[0]])
    tokens, kept_idx, cu_kept = vz.zip_tokens_varlen(hidden, importance, cu_seqlens, 0.65, 0.05, keys, backend=backend)

    kept_mask = golden(case, "kept_mask")
    assert torch.equal(kept_idx, kept_mask[span].nonzero()[:, 0])
    assert cu_kept.tolist() == [0, kept_idx.shape[0]]
    prefix = span.start
    out_image = golden(case, "out_inputs_embeds")[0, prefix : prefix + kept_idx.shape[0]]
    torch.testing.assert_close(tokens, out_image, atol=1e-5, rtol=0)


def test_two_golden_images_packed_give_each_image_its_published_result():
    """grid14x14 and grid20x28 share the head geometry: packed together, each keeps its own result."""
    cases = ("grid14x14", "grid20x28")
    q = torch.cat([golden(case, "q").transpose(0, 1) for case in cases])
    k = torch.cat([golden(case, "k").transpose(0, 1) for case in cases])
    patches = [golden(case, "q").shape[1] for case in cases]
    window_index = torch.cat([golden("grid14x14", "window_index"), golden("grid20x28", "window_index") + 49])
    importance = vz.pool_merge_units(
        vz.attention_importance_varlen(q, k, torch.tensor([0, patches[0], sum(patches)])), window_index
    )
    keys = vz.pool_merge_units(k, window_index).mean(dim=1)
    for case, piece in zip(cases, (slice(0, 49), slice(49, 189))):
        torch.testing.assert_close(importance[piece], golden(case, "attn_mean"), rtol=2e-5, atol=0)
        torch.testing.assert_close(keys[piece], golden(case, "attn_key")[0], rtol=1e-5, atol=1e-6)
