"""Qwen2.5-VL and Qwen3-VL served by vLLM with VisionZip equal the Hugging Face integration.

One engine per family and setting (``conftest.Engines`` keeps it across the tests that share
it; the tests run family by family). For each case (one wide image; a wide and a tall image,
whose text continues at ``start + max(t, h, w)``, not ``start + w``), against
``qwen_reference.py``'s results of ``apply_visionzip``: the prompt's token ids (the reduced
placeholder counts), the image features the language model receives (deepstack columns
included), the M-RoPE positions, exactly; the greedy tokens, and every step's logprobs within
``qwen_engine.LOGPROB_ATOL`` (float32). Without the switch the models are vLLM's own: they equal
Hugging Face without VisionZip.
"""
from __future__ import annotations

import pytest
from qwen_engine import (
    CASE_INDEXES,
    FAMILIES,
    assert_language_model_inputs,
    assert_matches,
    engine_options,
    generate,
    request,
    run_case,
    take_records,
    zipped_engine,
)
from qwen_reference import CASES


@pytest.mark.parametrize("family", FAMILIES, scope="module")
@pytest.mark.parametrize("index", CASE_INDEXES, ids=list(CASES))
def test_zipped_equals_hugging_face(engines, references, family, index):
    llm = zipped_engine(engines, references, family)
    _, expected = references(family)
    result = run_case(llm, family, index, recorded=True)
    assert_matches(result, expected["zipped"][index])
    assert_language_model_inputs(result, expected["zipped"][index])


@pytest.mark.parametrize("family", FAMILIES, scope="module")
def test_a_batch_with_the_same_image_twice(engines, references, family):
    """Both cases in one batch, the two-image one twice (its second copy served from the prefix
    and encoder caches): each request gets its own case's results."""
    llm = zipped_engine(engines, references, family)
    _, expected = references(family)
    indexes = [len(CASES) - 1, 0, len(CASES) - 1]
    results = generate(llm, [request(family, index) for index in indexes])
    llm.apply_model(take_records)
    for result, index in zip(results, indexes):
        assert_matches(result, expected["zipped"][index])


@pytest.mark.parametrize("family", FAMILIES, scope="module")
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
