"""LLaVA-NeXT served by vLLM with the switch equals ``apply_visionzip`` on the same checkpoint
(crops zipped one by one, the HF integration's layout); without it, the stock model."""
from __future__ import annotations

import pytest
import torch
from make_references import CONTEXTUAL, DOMINANT
from parity import assert_matches, greedy, image_features, requests

SWITCH = {"visionzip": {"dominant": DOMINANT, "contextual": CONTEXTUAL}}


@pytest.fixture
def llava_next(references, engines):
    checkpoint, expected = references("llava_next")
    return engines.get(model=checkpoint, hf_overrides=SWITCH), expected


def test_a_batch_of_prompts_with_one_and_two_images_equals_the_hf_integration(llava_next):
    llm, expected = llava_next
    outputs = llm.generate(requests(), greedy())
    for output, reference in zip(outputs, expected["zipped"]):
        assert_matches(output, reference)


def test_the_features_handed_to_the_language_model_equal_the_hf_integration(llava_next):
    llm, expected = llava_next
    for reference in expected["zipped"]:
        features = image_features(llm, reference["pixel_inputs"])
        assert len(features) == len(reference["features"])
        for got, want in zip(features, reference["features"]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_without_the_switch_the_model_is_vllms_own(references, engines):
    checkpoint, expected = references("llava_next")
    llm = engines.get(model=checkpoint)
    for output, reference in zip(llm.generate(requests(), greedy()), expected["stock"]):
        assert_matches(output, reference)
