"""Random-weight models built straight on the target device and dtype (no download, no copy).

Timing does not depend on weight values, so every model is built from its config with the
library's own random initialisation, allocated directly on the device in the benchmark dtype
(a 13B model built in float32 and then cast would need twice its bf16 size on the GPU).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import CLIPVisionModel, LlamaForCausalLM, MistralForCausalLM

from .geometry import EncoderGeometry, LanguageModelGeometry, ModelGeometry


def build_encoder(geometry: EncoderGeometry, attn_implementation: str, dtype, device) -> CLIPVisionModel:
    """A ``CLIPVisionModel`` with ``attn_implementation`` ``"sdpa"`` or ``"eager"``, in eval mode."""
    with torch.device(device):
        model = CLIPVisionModel._from_config(
            geometry.config(), dtype=dtype, attn_implementation=attn_implementation
        )
    return model.eval()


def build_projector(encoder_width: int, lm_hidden: int, dtype, device) -> nn.Sequential:
    """LLaVA's ``mlp2x_gelu`` projector: Linear(width, hidden), GELU, Linear(hidden, hidden)."""
    return nn.Sequential(
        nn.Linear(encoder_width, lm_hidden, device=device, dtype=dtype),
        nn.GELU(),
        nn.Linear(lm_hidden, lm_hidden, device=device, dtype=dtype),
    ).eval()


def build_language_model(geometry: LanguageModelGeometry, dtype, device) -> nn.Module:
    """A ``LlamaForCausalLM`` or ``MistralForCausalLM`` with SDPA attention, in eval mode."""
    model_class = MistralForCausalLM if geometry.family == "mistral" else LlamaForCausalLM
    with torch.device(device):
        model = model_class._from_config(geometry.config(), dtype=dtype, attn_implementation="sdpa")
    return model.eval()


@dataclass
class Models:
    """Everything one model geometry's three pipelines run, resident on the device together.

    ``encoder_sdpa`` serves the full-token pipeline and this package's; ``encoder_eager`` the
    published one (``output_attentions=True`` needs eager attention: an SDPA model returns no maps).
    Each is built from its own config object: attention layers read the implementation from their
    config at every call, and building from a shared config would switch both.
    """

    encoder_sdpa: CLIPVisionModel
    encoder_eager: CLIPVisionModel
    projector: nn.Sequential
    language_model: nn.Module


def build_models(geometry: ModelGeometry, dtype, device) -> Models:
    """The two encoders, the projector and the language model of ``geometry``."""
    return Models(
        encoder_sdpa=build_encoder(geometry.encoder, "sdpa", dtype, device),
        encoder_eager=build_encoder(geometry.encoder, "eager", dtype, device),
        projector=build_projector(geometry.encoder.width, geometry.lm.hidden, dtype, device),
        language_model=build_language_model(geometry.lm, dtype, device),
    )


def prompt_ids(geometry: ModelGeometry, batch: int, device, generator: torch.Generator):
    """Random ``(system_ids, question_ids)`` token ids in the LM's vocabulary."""
    vocab = geometry.lm.vocab
    system_ids = torch.randint(vocab, (batch, geometry.system_tokens), generator=generator)
    question_ids = torch.randint(vocab, (batch, geometry.question_tokens), generator=generator)
    return system_ids.to(device), question_ids.to(device)
