"""Qwen-VL with VisionZip on two ranks equals one rank: the vision tower split by heads (TP=2,
``mm_encoder_tp_mode="weights"``, vLLM's default) and the data-parallel encoder
(``mm_encoder_tp_mode="data"``: each rank encodes whole images, the zipped tokens are gathered).

Each case is compared, on every rank, with the Hugging Face integration's results, as one rank is
in ``test_qwen_served.py``: the same prompt ids, greedy tokens, features, positions, and logprobs
within ``qwen_engine.LOGPROB_ATOL`` (zipping each rank on its own heads moves them by about 1e-1).
"""
from __future__ import annotations

import cloudpickle
import pytest
import qwen_engine
from qwen_engine import (
    CASE_INDEXES,
    assert_language_model_inputs,
    assert_matches,
    run_case,
    zipped_engine,
)

TWO_CPU_RANKS = {"VLLM_CPU_OMP_THREADS_BIND": "0|1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


@pytest.fixture
def two_ranks(monkeypatch):
    """The environment of a TP=2 engine on CPUs; the recording functions sent to the ranks by
    value (the ranks' processes cannot import the test modules)."""
    for name, value in TWO_CPU_RANKS.items():
        monkeypatch.setenv(name, value)
    cloudpickle.register_pickle_by_value(qwen_engine)
    yield
    cloudpickle.unregister_pickle_by_value(qwen_engine)


@pytest.mark.parametrize(
    "family, mode", [("qwen2_5_vl", "weights"), ("qwen3_vl", "data")], ids=["heads", "data"]
)
def test_two_ranks_equal_hugging_face(engines, references, two_ranks, family, mode):
    llm = zipped_engine(engines, references, family, tensor_parallel_size=2, mm_encoder_tp_mode=mode)
    _, expected = references(family)
    for index in CASE_INDEXES:
        result = run_case(llm, family, index, recorded=True)
        assert len(result["ranks"]) == 2
        assert_matches(result, expected["zipped"][index])
        assert_language_model_inputs(result, expected["zipped"][index])
