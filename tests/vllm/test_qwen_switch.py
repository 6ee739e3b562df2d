"""Qwen-VL's bad switch values are refused when vLLM makes the model's configuration
(``EngineArgs.create_model_config``, the first step of an engine start), with
``apply_visionzip``'s message for Qwen-VL's fraction budgets and the switch named; a count an
image cannot meet fails that image's request."""
from __future__ import annotations

import pytest
from qwen_engine import engine_options, generate, request
from vllm.engine.arg_utils import EngineArgs

# Each check makes a model config (vLLM inspects the model in a subprocess, seconds each): the
# families share the bad values between them.
BAD_SWITCHES = [
    ("qwen2_5_vl", {"dominant": 1.5}, ValueError, r"`dominant` as a fraction must be in \[0, 1\], got 1.5"),
    ("qwen2_5_vl", {"contextual": -1}, ValueError, r"`contextual` must be >= 0 tokens, got -1"),
    (
        "qwen3_vl",
        {"dominant": "many"},
        TypeError,
        r"`dominant` must be an int \(tokens\) or a float \(fraction\), got str",
    ),
    ("qwen3_vl", {"dominant": 0, "contextual": 0}, ValueError, r"must keep at least one token, got 0 \+ 0"),
    ("qwen2_5_vl", {"backend": "fastest"}, ValueError, r"`backend` must be one of"),
]


@pytest.mark.parametrize("family, switch, error, message", BAD_SWITCHES)
def test_a_bad_budget_fails_when_the_model_config_is_made(references, family, switch, error, message):
    checkpoint, _ = references(family)
    arguments = EngineArgs(model=checkpoint, hf_overrides={"visionzip": switch}, enforce_eager=True)
    with pytest.raises(error, match=r"hf_overrides\['visionzip'\] \(Qwen.*" + message):
        arguments.create_model_config()


def test_token_counts_are_accepted(references):
    """Counts as well as fractions, as in ``apply_visionzip`` (whether they fit an image is
    checked per image, when it is processed)."""
    checkpoint, _ = references("qwen3_vl")
    switch = {"dominant": 8, "contextual": 2}
    config = EngineArgs(model=checkpoint, hf_overrides={"visionzip": switch}).create_model_config()
    assert config.hf_config.visionzip == switch


def test_a_count_an_image_cannot_meet_fails_its_request(engines, references):
    """An integer budget is checked per image, when the image is processed: 12 + 4 tokens of an
    image of 15 merged tokens fails that request with ``apply_visionzip``'s message."""
    checkpoint, _ = references("qwen2_5_vl")
    llm = engines.get(**engine_options(checkpoint, hf_overrides={"visionzip": {"dominant": 12, "contextual": 4}}))
    with pytest.raises(ValueError, match=r"an image of 15 tokens cannot keep 12 dominant \+ 4 contextual"):
        generate(llm, [request("qwen2_5_vl", 0)])
