"""Qwen2.5-VL and Qwen3-VL served by vLLM with VisionZip equal the Hugging Face integration.

One engine per family and setting (``conftest.Engines`` keeps it across the tests that share it).
For each case (one wide image; a wide and a tall image, whose text continues at ``start + max(t, h,
w)``, not ``start + w``), against ``qwen_reference.py``'s results of ``apply_visionzip``: the
prompt's token ids (the reduced placeholder counts), the image features the language model
receives (deepstack columns included), the M-RoPE positions, exactly; the greedy tokens, and every
step's logprobs within ``LOGPROB_ATOL`` (float32). Without the switch the models are vLLM's own:
they equal Hugging Face without VisionZip.
"""
from __future__ import annotations

import pytest
import torch
from qwen_engine import (
    FAMILIES,
    allowed_logprobs,
    engine_options,
    record_language_model_inputs,
    run_case,
)
from qwen_reference import CASES

LOGPROB_ATOL = 1e-4
FEATURE_ATOL = 1e-5
CASE_INDEXES = range(len(CASES))


def zipped_engine(engines, references, family: str, **options):
    checkpoint, _ = references(family)
    llm = engines.get(**engine_options(checkpoint, hf_overrides={"visionzip": {}}, **options))
    llm.apply_model(record_language_model_inputs)
    return llm


def assert_matches(result: dict, reference: dict) -> None:
    assert result["input_ids"] == reference["input_ids"].tolist()
    assert result["tokens"] == reference["tokens"].tolist()
    torch.testing.assert_close(
        result["logprobs"], allowed_logprobs(reference), atol=LOGPROB_ATOL, rtol=0
    )


def assert_language_model_inputs(result: dict, reference: dict) -> None:
    """Every rank handed the reference's features and positions to its language model (the last
    record holds the whole prompt's positions)."""
    for records in result["ranks"]:
        features = torch.cat([record_features for record_features, _ in records])
        torch.testing.assert_close(features, reference["features"], atol=FEATURE_ATOL, rtol=0)
        assert torch.equal(records[-1][1], reference["positions"])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("index", CASE_INDEXES, ids=list(CASES))
def test_zipped_equals_hugging_face(engines, references, family, index):
    llm = zipped_engine(engines, references, family)
    _, expected = references(family)
    result = run_case(llm, family, index, recorded=True)
    assert_matches(result, expected["zipped"][index])
    assert_language_model_inputs(result, expected["zipped"][index])


@pytest.mark.parametrize("family", FAMILIES)
def test_without_switch_vllm_is_unchanged(engines, references, family):
    """No ``visionzip`` key: every placeholder, token and logprob of Hugging Face without
    VisionZip (the case with a tall image, whose positions differ most)."""
    checkpoint, expected = references(family)
    llm = engines.get(**engine_options(checkpoint))
    index = len(CASES) - 1
    assert_matches(run_case(llm, family, index, recorded=False), expected["stock"][index])


def test_chunked_prefill_splits_images(engines, references):
    """Chunks of 8 tokens cut both images of Qwen2.5-VL's two-image case; the positions of each
    chunk's kept tokens are set as it arrives."""
    llm = zipped_engine(
        engines, references, "qwen2_5_vl", enable_chunked_prefill=True, max_num_batched_tokens=8,
        max_num_seqs=1,
    )
    _, expected = references("qwen2_5_vl")
    index = len(CASES) - 1
    result = run_case(llm, "qwen2_5_vl", index, recorded=True)
    assert len(result["ranks"][0]) > 2, "the images' tokens were not split over chunks"
    assert_matches(result, expected["zipped"][index])
    assert_language_model_inputs(result, expected["zipped"][index])
