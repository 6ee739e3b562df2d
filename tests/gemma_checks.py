"""Checks the Gemma 3 and Gemma 4 tests share: what the language model receives, a second turn
from the cache, and ``handle.remove()`` restoring the model and the processor exactly."""
from __future__ import annotations

import torch

from visionzip_kernels.integrations import apply_visionzip

GENERATE = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)


def language_model_image_rows(model, inputs, image_token_id: int) -> torch.Tensor:
    """The language model's input embeddings at the soft image tokens, in sequence order."""
    captured = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    with torch.no_grad():
        model(**inputs)
    hook.remove()
    return captured["embeds"][inputs["input_ids"] == image_token_id]


def check_second_turn_continues_the_cache(model, processor, inputs, type_ids: str, image_inputs: tuple[str, ...]):
    """A follow-up question generated from the first turn's cache, without pixels, runs no vision
    tower and gives the logits and tokens of the whole conversation sent again with its images.

    type_ids: the name of the token-type input (``token_type_ids`` or ``mm_token_type_ids``);
    image_inputs: the names of the image inputs (``pixel_values`` and any positions).
    """
    first = model.generate(**inputs, **GENERATE, return_dict_in_generate=True)
    batch = inputs["input_ids"].shape[0]
    follow_up = processor.tokenizer(["user more please ? model"] * batch, add_special_tokens=False, return_tensors="pt")
    input_ids = torch.cat([first.sequences, follow_up["input_ids"]], dim=1)
    added = input_ids.shape[1] - inputs["input_ids"].shape[1]
    text = dict(
        input_ids=input_ids,
        attention_mask=torch.cat([inputs["attention_mask"], torch.ones(batch, added, dtype=torch.long)], dim=1),
        **{type_ids: torch.cat([inputs[type_ids], torch.zeros(batch, added, dtype=torch.long)], dim=1)},
    )
    tower_runs = []
    hook = model.model.vision_tower.register_forward_hook(lambda *args: tower_runs.append(1))
    cached = model.generate(**text, cache=first.cache, **GENERATE, return_dict_in_generate=True, output_logits=True)
    hook.remove()
    assert not tower_runs, "the second turn must not run the vision tower"
    images = {name: inputs[name] for name in image_inputs}
    fresh = model.generate(**text, **images, **GENERATE, return_dict_in_generate=True, output_logits=True)
    torch.testing.assert_close(cached.logits[0], fresh.logits[0], atol=1e-4, rtol=1e-4)
    assert torch.equal(cached.sequences, fresh.sequences)


def check_remove_restores_exactly(model, processor, make_inputs, budget: dict, image_sizes):
    """After ``generate`` under VisionZip and ``handle.remove()`` (twice), the instances' attributes,
    the processor's inputs and serving counts and the model's logits are what they were before.

    make_inputs: ``processor -> inputs``; budget: ``apply_visionzip``'s ``dominant``/``contextual``.
    """
    inputs_before = make_inputs(processor)
    with torch.no_grad():
        logits_before = model(**inputs_before).logits
    served_before = processor._get_num_multimodal_tokens(image_sizes=image_sizes)
    attributes = (dict(vars(model)), dict(vars(model.model)), dict(vars(processor)))

    handle = apply_visionzip(model, processor, **budget)
    model.generate(**make_inputs(processor), **GENERATE)
    handle.remove()
    handle.remove()

    assert not handle.active
    assert (dict(vars(model)), dict(vars(model.model)), dict(vars(processor))) == attributes
    inputs_after = make_inputs(processor)
    assert inputs_after.keys() == inputs_before.keys()
    for key in inputs_before:
        assert torch.equal(inputs_after[key], inputs_before[key]), key
    with torch.no_grad():
        assert torch.equal(model(**inputs_after).logits, logits_before)
    assert processor._get_num_multimodal_tokens(image_sizes=image_sizes) == served_before


def check_cuda_run_keeps_the_cpu_tokens(make_model, make_processor, make_inputs, budget: dict, image_inputs, kept):
    """On a GPU (``"auto"``: the Triton or CUDA backends) a model under VisionZip keeps the tokens a
    CPU run of the same weights keeps; features and the first logits agree within float32 rounding
    of the two devices' matmuls (the caller turns TF32 off).

    make_model, make_processor: builders; make_inputs: ``processor -> inputs``; budget:
    ``apply_visionzip``'s ``dominant``/``contextual``; image_inputs: the names of
    ``get_image_features``'s inputs, in order; kept: its output -> the kept indices as lists.
    """
    outputs = []
    for device in ("cpu", "cuda"):
        model, processor = make_model().to(device), make_processor()
        apply_visionzip(model, processor, **budget)
        inputs = {name: value.to(device) for name, value in make_inputs(processor).items()}
        with torch.no_grad():
            features = model.model.get_image_features(*(inputs[name] for name in image_inputs))
        generated = model.generate(**inputs, **GENERATE, return_dict_in_generate=True, output_logits=True)
        outputs.append((kept(features), [rows.cpu() for rows in features.pooler_output], generated.logits[0].cpu()))
    (cpu_kept, cpu_features, cpu_logits), (gpu_kept, gpu_features, gpu_logits) = outputs
    assert gpu_kept == cpu_kept
    for gpu_rows, cpu_rows in zip(gpu_features, cpu_features):
        torch.testing.assert_close(gpu_rows, cpu_rows, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gpu_logits, cpu_logits, atol=1e-4, rtol=1e-4)
