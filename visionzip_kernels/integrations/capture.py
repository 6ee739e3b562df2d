"""Read what modules compute inside a call of a model's own method, through forward hooks.

The Gemma integrations run the model's own ``get_image_features`` (every encoder layer keeps its
attention implementation) and read the queries and keys of the last encoder layer as that layer
computes them: no second projection, no attention map.
"""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def captured_calls(outputs: dict[str, torch.nn.Module], keyword_inputs: dict[str, torch.nn.Module] | None = None):
    """Within the block, the yielded dict holds, after each call of a module: ``captured[name]``
    its output, for each ``outputs[name]``; its keyword arguments (a dict), for each
    ``keyword_inputs[name]``. A later call overwrites an earlier one. The hooks are removed on exit.
    """
    captured: dict = {}

    def store_output(name):
        return lambda module, args, output: captured.__setitem__(name, output)

    def store_kwargs(name):
        return lambda module, args, kwargs: captured.__setitem__(name, kwargs)

    handles = [module.register_forward_hook(store_output(name)) for name, module in outputs.items()]
    handles += [
        module.register_forward_pre_hook(store_kwargs(name), with_kwargs=True)
        for name, module in (keyword_inputs or {}).items()
    ]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
