"""The switch's bad values, an unsupported model and an unsupported vLLM are refused when the
engine is created, with our message, before any model is built: already when vLLM makes the
model's configuration (``EngineArgs.create_model_config``), the first step of an engine start."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from vllm import LLM
from vllm.engine.arg_utils import EngineArgs

from visionzip_kernels.vllm.registry import check_model_config
from visionzip_kernels.vllm.switch import supported_vllm_message

BAD_SWITCHES = [
    ({"dominant": 0}, r"`dominant` must be >= 1 \(it counts the CLS token\), got 0"),
    ({"contextual": -1}, r"`contextual` must be >= 0, got -1"),
    ({"dominant": 15, "contextual": 3}, r"15 \+ 3 = 18 is more than the 17 tokens"),
    ({"dominant": 5.5}, r"`dominant` must be an int"),
    ({"dominant": 5, "contextual": 3, "backend": "fastest"}, r"`backend` must be one of"),
    ({"ratio": 0.5}, r"unknown key\(s\) \['ratio'\]; the keys are \['dominant', 'contextual', 'backend'\]"),
]


@pytest.mark.parametrize(
    "family, switch, message",
    [("llava", switch, message) for switch, message in BAD_SWITCHES]
    + [("llava_next", *BAD_SWITCHES[2])],
)
def test_a_bad_budget_fails_when_the_model_config_is_made(references, family, switch, message):
    checkpoint, _ = references(family)
    arguments = EngineArgs(model=checkpoint, hf_overrides={"visionzip": switch}, enforce_eager=True)
    with pytest.raises((TypeError, ValueError), match=r"hf_overrides\['visionzip'\].*" + message):
        arguments.create_model_config()


def test_a_switch_that_is_not_a_dict_is_refused(references):
    checkpoint, _ = references("llava")
    with pytest.raises((TypeError, ValueError), match=r"hf_overrides\['visionzip'\] must be a dict"):
        LLM(model=checkpoint, hf_overrides={"visionzip": 54}, enforce_eager=True)


def test_an_unsupported_model_asking_for_visionzip_is_refused(references):
    checkpoint, _ = references("llava")
    llama = checkpoint.replace("llava/checkpoint", "llama")
    with pytest.raises(ValueError, match=r"VisionZip does not support LlamaForCausalLM in vLLM"):
        LLM(model=llama, hf_overrides={"visionzip": {}}, enforce_eager=True)


def test_the_supported_vllm_range():
    assert supported_vllm_message("0.32.0") is None
    assert supported_vllm_message("0.32.1.dev3+gabc") is None
    for version in ("0.31.2", "0.33.0", "1.0.0"):
        assert "supports vLLM >= 0.32.0, < 0.33" in supported_vllm_message(version)


def test_an_unsupported_vllm_refuses_only_models_that_ask_for_visionzip():
    problem = supported_vllm_message("0.33.0")
    asking = SimpleNamespace(hf_config=SimpleNamespace(visionzip={}), architecture="LlavaForConditionalGeneration")
    not_asking = SimpleNamespace(hf_config=SimpleNamespace(), architecture="LlamaForCausalLM")
    check_model_config(not_asking, problem)
    with pytest.raises(RuntimeError, match=r"vLLM 0.33.0 is installed"):
        check_model_config(asking, problem)
