"""What the integration tests read from a model: the language model's inputs, the instances' state."""
from __future__ import annotations

import torch


def language_model_inputs(model, inputs) -> dict:
    """The keyword arguments the language model receives in one forward pass of ``model``, and
    the forward's ``logits``."""
    captured = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(kwargs), with_kwargs=True
    )
    with torch.no_grad():
        captured["logits"] = model(**inputs).logits
    hook.remove()
    return captured


def instance_state(model) -> dict:
    """Every module's instance attributes, one level of containers (hooks, parameters) copied."""
    return {
        name: {key: dict(value) if isinstance(value, dict) else value for key, value in vars(module).items()}
        for name, module in model.named_modules()
    }
