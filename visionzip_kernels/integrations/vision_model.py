"""VisionZip in a bare ``CLIPVisionModel`` / ``SiglipVisionModel``: ``forward`` gives zipped tokens.

With VisionZip applied, ``model(pixel_values)`` returns a ``VisionZipOutput`` whose
``last_hidden_state`` is ``[B, dominant + contextual, D]``: the zipped tokens of the penultimate
encoder layer (the layer LLaVA reads), not of the last one, which is not run. ``pooler_output`` is
``None``: CLIP's pooled output (the post-layernormed CLS token of the last layer) and SigLIP's
attention-pooling head both read the last layer. ``dominant_idx`` gives the kept token indices.
Attention stays the model's own implementation (SDPA by default) in every layer.
"""
from __future__ import annotations

import functools

from .budget import Budget
from .encoder import visionzip_features
from .handle import InstancePatch, bind_methods
from .outputs import VisionZipOutput, pop_return_dict


def zipped_forward(model, pixel_values=None, *, budget: Budget, **kwargs):
    """The replacement ``forward``: pixel_values ``[B, C, H, W]`` -> ``VisionZipOutput``.

    ``return_dict=False`` returns the output's tuple, as the original ``forward`` does.
    """
    if pixel_values is None:
        raise ValueError("VisionZip vision model: `pixel_values` is required")
    return_dict = pop_return_dict(kwargs, "VisionZip vision model")
    tokens, dominant_idx = visionzip_features(
        model, pixel_values, budget.dominant, budget.contextual, backend=budget.backend
    )
    output = VisionZipOutput(last_hidden_state=tokens, dominant_idx=dominant_idx)
    return output.to_tuple() if return_dict is False else output


def patch_vision_model(model, budget: Budget) -> list[InstancePatch]:
    """Replace ``model.forward`` on this instance; the patch undoes it."""
    methods = {"forward": functools.partial(zipped_forward, budget=budget)}
    return bind_methods(model, methods, owner_arg="model")
