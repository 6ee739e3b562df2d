"""What a method replaced by VisionZip returns, and which of the usual output options it accepts."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling


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


def pop_return_dict(kwargs: dict, caller: str) -> bool | None:
    """Check a replacement method's extra keyword arguments and return its ``return_dict``.

    Raises ``ValueError`` for an option VisionZip cannot honour set to true (the encoder runs to
    its penultimate layer only, at its configured image size) and ``TypeError`` for any other
    argument; ``None`` and ``False`` values are accepted and ignored.
    """
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
