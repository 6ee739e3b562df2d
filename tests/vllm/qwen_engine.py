"""What the Qwen-VL vLLM tests share: the cases, an engine's options, running one case, what the
language model received, and the comparisons with the Hugging Face integration's results.

``run_case`` sends one case of ``qwen_reference.CASES`` alone (``generate``: several at once), greedy, ``STEPS`` tokens with every
vision token disallowed and EOS masked (as the references' ``suppress_tokens`` and
``min_new_tokens``), and returns the prompt ids, the greedy tokens, each step's logprobs of the
whole vocabulary (vLLM's raw logprobs) and, with the switch on, what the model's
``recompute_mrope_positions`` handed on: the image features (position channels removed) and the
prompt's M-RoPE positions, read from every rank.
"""
from __future__ import annotations

import torch
from qwen_reference import CASES, STEPS, SUPPRESSED, WORDS, make_images

FAMILIES = ("qwen2_5_vl", "qwen3_vl")
CASE_INDEXES = range(len(CASES))
VOCAB = len(WORDS)
ALLOWED = [token for token in range(VOCAB) if token not in SUPPRESSED]
LOGPROB_ATOL = 1e-4
FEATURE_ATOL = 1e-5


def engine_options(checkpoint: str, **options) -> dict:
    """Options of an engine serving ``checkpoint``: logprobs of the whole vocabulary, two images
    a prompt, no videos (the test checkpoints have no video processor)."""
    return dict(
        model=checkpoint,
        max_logprobs=-1,
        limit_mm_per_prompt={"image": 2, "video": 0},
        **options,
    )


def record_language_model_inputs(model) -> None:
    """On a model instance (``LLM.apply_model``): keep the output of every call of
    ``recompute_mrope_positions`` that handed on image features, in ``model.visionzip_records``
    (emptied where the model records already)."""
    if hasattr(model, "visionzip_records"):
        model.visionzip_records = []
        return
    recompute = model.recompute_mrope_positions
    model.visionzip_records = []

    def recording(input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens):
        output = recompute(input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens)
        features, positions, _ = output
        if len(features):
            model.visionzip_records.append((torch.cat(list(features)).cpu(), positions.cpu()))
        return output

    model.recompute_mrope_positions = recording


def take_records(model) -> list:
    records, model.visionzip_records = model.visionzip_records, []
    return records


def request(family: str, index: int) -> dict:
    prompt, which = list(CASES.values())[index]
    return {"prompt": prompt, "multi_modal_data": {"image": make_images(family, which)}}


def outcome(output) -> dict:
    """A request's prompt ids, greedy tokens and each step's logprobs of the allowed tokens."""
    completion = output.outputs[0]
    return dict(
        input_ids=list(output.prompt_token_ids),
        tokens=list(completion.token_ids),
        logprobs=torch.tensor([[step[token].logprob for token in ALLOWED] for step in completion.logprobs]),
    )


def generate(llm, requests: list[dict]) -> list[dict]:
    from vllm import SamplingParams

    params = SamplingParams(
        max_tokens=STEPS, min_tokens=STEPS, temperature=0.0, logprobs=VOCAB, allowed_token_ids=ALLOWED
    )
    return [outcome(output) for output in llm.generate(requests, params, use_tqdm=False)]


def run_case(llm, family: str, index: int, recorded: bool) -> dict:
    """One case alone; with ``recorded``, also what each rank's language model received."""
    (result,) = generate(llm, [request(family, index)])
    if recorded:
        result["ranks"] = llm.apply_model(take_records)
    return result


def allowed_logprobs(reference: dict) -> torch.Tensor:
    """The reference's logprobs of the tokens the vLLM runs allow."""
    return reference["logprobs"][:, ALLOWED]


def zipped_engine(engines, references, family: str, **options):
    """The engine of ``family``'s checkpoint with the switch (the family's default budget) and
    ``options``, its models recording what their language model receives."""
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
