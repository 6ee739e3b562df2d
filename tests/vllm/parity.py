"""Requests built from ``make_references.PROMPTS`` and the comparisons with the references."""
from __future__ import annotations

import torch
from make_references import PROMPTS, STEPS, make_images

LOGPROB_TOLERANCE = 1e-4
TOP_LOGPROBS = 5


def requests(indices=None) -> list[dict]:
    """vLLM prompts (text and images) of ``PROMPTS`` (all, or those at ``indices``)."""
    indices = range(len(PROMPTS)) if indices is None else indices
    return [
        {"prompt": PROMPTS[i][0], "multi_modal_data": {"image": make_images(PROMPTS[i][1], i)}}
        for i in indices
    ]


def greedy():
    """Greedy sampling of ``STEPS`` tokens (end of text masked, as HF's ``min_new_tokens``), with
    the raw logprobs of the top tokens."""
    from vllm import SamplingParams

    return SamplingParams(
        temperature=0.0, max_tokens=STEPS, min_tokens=STEPS, logprobs=TOP_LOGPROBS
    )


def logprob_error(completion, reference: dict) -> float:
    """Largest difference between vLLM's logprobs of each step's top tokens and the reference's."""
    error = 0.0
    for step, top in enumerate(completion.logprobs):
        for token, logprob in top.items():
            error = max(error, abs(logprob.logprob - reference["logprobs"][step, token].item()))
    return error


def assert_matches(output, reference: dict) -> None:
    """One vLLM output equals one reference: prompt ids, greedy tokens, logprobs within 1e-4."""
    assert output.prompt_token_ids == reference["prompt_ids"]
    completion = output.outputs[0]
    assert list(completion.token_ids) == reference["tokens"]
    assert logprob_error(completion, reference) <= LOGPROB_TOLERANCE


def image_features(llm, pixel_inputs: dict) -> list[torch.Tensor]:
    """The features the model hands to its language model for the processor's ``pixel_inputs``,
    computed by the engine's model (``embed_multimodal``)."""

    def embed(model):
        with torch.no_grad():
            return [feature.float().cpu() for feature in model.embed_multimodal(**pixel_inputs)]

    return llm.apply_model(embed)[0]
