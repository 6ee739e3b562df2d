"""VisionZip in a bare ``CLIPVisionModel`` / ``SiglipVisionModel``: ``forward`` gives zipped tokens.

With VisionZip applied, ``model(pixel_values)`` returns a ``VisionZipOutput`` whose
``last_hidden_state`` is ``[B, dominant + contextual, D]``: the zipped tokens of the penultimate
encoder layer (the layer LLaVA reads), not of the last one, which is not run. ``pooler_output`` is
``None``: CLIP's pooled output (the post-layernormed CLS token of the last layer) and SigLIP's
attention-pooling head both read the last layer. ``dominant_idx`` gives the kept token indices.
Attention stays the model's own implementation (SDPA by default) in every layer.

``VisionZipOutput`` is what every replaced method returns (here and in the LLaVA models), and
``pop_return_dict`` checks which of the usual output options such a method accepts.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .budget import Budget
from .encoder import visionzip_features
from .handle import InstancePatch, bind_methods


@dataclass
class VisionZipOutput(BaseModelOutputWithPooling):
    """``BaseModelOutputWithPooling`` plus the indices of the dominant tokens.

    last_hidden_state: ``[B, dominant + contextual, D]`` the zipped tokens of the penultimate
        encoder layer, in the vision encoder's width ``D`` (one row per image, or per LLaVA-NeXT
        crop): the dominant tokens in ascending index order (the CLS token first where there is
        one), then the contextual tokens.
    pooler_output: ``None`` for a bare vision model (the last layer, which the pooled output reads,
        is not run); for a LLaVA model, the projected features handed to the language model, a
        list with one ``[tokens, text_hidden]`` tensor per image.
    dominant_idx: ``[B, dominant]`` int64, the ascending indices of the dominant tokens among the
        encoder's ``N`` tokens (CLS at 0 where there is one).
    """

    dominant_idx: torch.LongTensor | None = None


UNSUPPORTED_OPTIONS = ("output_attentions", "output_hidden_states", "interpolate_pos_encoding")
# Options of a LLaVA model's forward that reach ``get_image_features`` with the forward's keyword
# arguments: they ask the language model for its attentions and hidden states, which it still
# returns; the replaced method has no vision-layer outputs to add, so it leaves them out.
LANGUAGE_MODEL_OPTIONS = ("output_attentions", "output_hidden_states")


def pop_return_dict(kwargs: dict, caller: str, ignored: tuple[str, ...] = ()) -> bool | None:
    """Check a replacement method's extra keyword arguments and return its ``return_dict``.

    ``ignored`` options are accepted whatever their value. Raises ``ValueError`` for any other
    option VisionZip cannot honour set to true (the encoder runs to its penultimate layer only, at
    its configured image size) and ``TypeError`` for any other argument; ``None`` and ``False``
    values are accepted and ignored.
    """
    for option in ignored:
        kwargs.pop(option, None)
    for option in UNSUPPORTED_OPTIONS:
        if kwargs.pop(option, None):
            raise ValueError(
                f"{caller}: `{option}=True` is not supported while VisionZip is applied (the "
                "encoder runs to its penultimate layer only, at its configured image size); "
                "remove VisionZip for this call"
            )
    return_dict = kwargs.pop("return_dict", None)
    unsupported = sorted(
        name for name, value in kwargs.items() if value is not None and value is not False
    )
    if unsupported:
        raise TypeError(
            f"{caller}: unsupported arguments while VisionZip is applied: {unsupported}"
        )
    return return_dict


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
