"""Tensor parallelism: with the CLIP tower's heads split over two ranks, the per-step logprobs
equal one rank's (the Hugging Face integration's) to 1e-5; zipping on each rank's own heads moves
them by about 1e-1. Chunked prefill that splits an image's placeholders across steps gives the
same result."""
from __future__ import annotations

import os

from make_references import CONTEXTUAL, DOMINANT
from parity import assert_matches, greedy, logprob_error, requests

SWITCH = {"visionzip": {"dominant": DOMINANT, "contextual": CONTEXTUAL}}
TP_TOLERANCE = 1e-5


def test_chunked_prefill_that_splits_an_image_gives_the_same_tokens(references, engines):
    checkpoint, expected = references("llava")
    # 8 tokens per step: the one-image prompt's 8 placeholders start at position 1, the two-image
    # prompt's second image at 10, so both are split between steps.
    llm = engines.get(
        model=checkpoint, hf_overrides=SWITCH, max_num_batched_tokens=8, max_num_seqs=2
    )
    scheduler = llm.llm_engine.vllm_config.scheduler_config
    assert scheduler.max_num_batched_tokens == 8 and scheduler.enable_chunked_prefill
    for output, reference in zip(llm.generate(requests(), greedy()), expected["zipped"]):
        assert_matches(output, reference)


def test_two_ranks_give_one_ranks_logprobs(references, engines):
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0|1"
    os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    checkpoint, expected = references("llava")
    llm = engines.get(model=checkpoint, hf_overrides=SWITCH, tensor_parallel_size=2)
    for output, reference in zip(llm.generate(requests(), greedy()), expected["zipped"]):
        assert output.prompt_token_ids == reference["prompt_ids"]
        assert list(output.outputs[0].token_ids) == reference["tokens"]
        assert logprob_error(output.outputs[0], reference) <= TP_TOLERANCE
