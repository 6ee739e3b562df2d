"""LLaVA-1.5 served by vLLM with the switch equals ``apply_visionzip`` on the same checkpoint; without
the switch it equals the stock model."""
from __future__ import annotations

import logging

import pytest
import torch
from make_references import CONTEXTUAL, DOMINANT
from parity import assert_matches, greedy, image_features, requests

SWITCH = {"visionzip": {"dominant": DOMINANT, "contextual": CONTEXTUAL}}


@pytest.fixture
def llava(references, engines):
    checkpoint, expected = references("llava")
    return engines.get(
        model=checkpoint, hf_overrides=SWITCH, enable_prefix_caching=True, block_size=32
    ), expected


def test_a_batch_of_prompts_with_one_and_two_images_equals_the_hf_integration(llava):
    llm, expected = llava
    outputs = llm.generate(requests(), greedy())
    for output, reference in zip(outputs, expected["zipped"]):
        assert_matches(output, reference)
    assert len(outputs[0].prompt_token_ids) < len(expected["stock"][0]["prompt_ids"])


def test_the_features_handed_to_the_language_model_equal_the_hf_integration(llava):
    llm, expected = llava
    for reference in expected["zipped"]:
        features = image_features(llm, reference["pixel_inputs"])
        assert len(features) == len(reference["features"])
        for got, want in zip(features, reference["features"]):
            torch.testing.assert_close(got.reshape(want.shape), want, rtol=1e-5, atol=1e-5)


def test_the_same_images_again_reuse_the_caches_and_give_the_same_tokens(llava):
    """The two-image prompt (longer than one 32-token block) twice: the second is served from the
    prefix cache and gives the reference's tokens again."""
    llm, expected = llava
    first = llm.generate(requests([1]), greedy())[0]
    again = llm.generate(requests([1]), greedy())[0]
    assert again.num_cached_tokens >= 32
    assert_matches(first, expected["zipped"][1])
    assert_matches(again, expected["zipped"][1])


def test_without_the_switch_the_model_is_vllms_own(references, engines, caplog):
    checkpoint, expected = references("llava")
    llm = engines.get(model=checkpoint)
    with caplog.at_level(logging.DEBUG, logger="visionzip_kernels"):
        outputs = llm.generate(requests(), greedy())
    for output, reference in zip(outputs, expected["stock"]):
        assert_matches(output, reference)
    assert not [record for record in caplog.records if record.name.startswith("visionzip_kernels")]
