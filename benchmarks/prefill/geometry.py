"""Model geometries and token budgets of the prefill benchmark.

The paper's geometries (LLaVA-1.5 and LLaVA-NeXT, 7B and 13B) are built from these shapes with
random weights; the tiny geometries keep the same structure at toy sizes so the benchmark runs in
CI on a CPU. Budgets are given per crop as ``(k_dom, k_ctx)``, ``k_dom`` counting the CLS token.
"""
from __future__ import annotations

from dataclasses import dataclass

from transformers import CLIPVisionConfig, LlamaConfig, MistralConfig


@dataclass(frozen=True)
class EncoderGeometry:
    """A CLIP vision tower: ``tokens`` = 1 CLS + (image_size / patch_size)^2 patches."""

    name: str
    layers: int
    width: int
    heads: int
    intermediate: int
    image_size: int
    patch_size: int

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1

    def config(self) -> CLIPVisionConfig:
        return CLIPVisionConfig(
            hidden_size=self.width,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            image_size=self.image_size,
            patch_size=self.patch_size,
            hidden_act="quick_gelu",
        )


@dataclass(frozen=True)
class LanguageModelGeometry:
    """A decoder-only language model; ``family`` is ``"llama"`` or ``"mistral"``."""

    name: str
    family: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int

    def config(self) -> LlamaConfig | MistralConfig:
        shape = dict(
            hidden_size=self.hidden,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            intermediate_size=self.intermediate,
            vocab_size=self.vocab,
        )
        if self.family == "mistral":
            # Mistral-7B-Instruct-v0.2, the LM of llava-v1.6-mistral-7b, attends over the full context.
            return MistralConfig(**shape, max_position_embeddings=32768, sliding_window=None)
        return LlamaConfig(**shape, max_position_embeddings=4096)


@dataclass(frozen=True)
class Budget:
    """Tokens kept per crop: ``k_dom`` dominant (CLS included) + ``k_ctx`` contextual."""

    k_dom: int
    k_ctx: int

    def visual_tokens(self, crops: int) -> int:
        return crops * (self.k_dom + self.k_ctx)


@dataclass(frozen=True)
class ModelGeometry:
    """One LLaVA model: encoder, crops per image, budgets, language model and prompt lengths.

    ``full_tokens`` is what the LM prefills without VisionZip: every patch token of every crop
    (LLaVA drops the CLS token). The prompt is ``system_tokens`` text tokens, the visual tokens,
    then ``question_tokens`` text tokens.
    """

    name: str
    encoder: EncoderGeometry
    crops: int
    budgets: tuple[Budget, ...]
    lm: LanguageModelGeometry
    batches: tuple[int, ...]
    system_tokens: int
    question_tokens: int

    @property
    def full_tokens(self) -> int:
        return self.crops * (self.encoder.tokens - 1)


CLIP_L_336 = EncoderGeometry("CLIP-L/14-336", 24, 1024, 16, 4096, 336, 14)
VICUNA_7B = LanguageModelGeometry("Vicuna-7B", "llama", 4096, 32, 32, 32, 11008, 32000)
VICUNA_13B = LanguageModelGeometry("Vicuna-13B", "llama", 5120, 40, 40, 40, 13824, 32000)
MISTRAL_7B = LanguageModelGeometry("Mistral-7B", "mistral", 4096, 32, 32, 8, 14336, 32000)

LLAVA_15_BUDGETS = (Budget(54, 10), Budget(108, 20), Budget(162, 30))  # 64 / 128 / 192 tokens
LLAVA_NEXT_BUDGETS = (Budget(27, 5), Budget(54, 10), Budget(108, 20))  # x5 crops: 160 / 320 / 640
SYSTEM_TOKENS = 35  # about the length of the Vicuna v1 system prompt, "USER:" included
QUESTION_TOKENS = 60
PAPER_BATCHES = (1, 8)


def paper_geometries() -> tuple[ModelGeometry, ...]:
    """The four models of the paper's efficiency comparison, at full size."""
    prompt = dict(batches=PAPER_BATCHES, system_tokens=SYSTEM_TOKENS, question_tokens=QUESTION_TOKENS)
    return (
        ModelGeometry("LLaVA-1.5-7B", CLIP_L_336, 1, LLAVA_15_BUDGETS, VICUNA_7B, **prompt),
        ModelGeometry("LLaVA-1.5-13B", CLIP_L_336, 1, LLAVA_15_BUDGETS, VICUNA_13B, **prompt),
        ModelGeometry("LLaVA-NeXT-7B", CLIP_L_336, 5, LLAVA_NEXT_BUDGETS, MISTRAL_7B, **prompt),
        ModelGeometry("LLaVA-NeXT-13B", CLIP_L_336, 5, LLAVA_NEXT_BUDGETS, VICUNA_13B, **prompt),
    )


TINY_ENCODER = EncoderGeometry("CLIP-tiny", 3, 64, 4, 128, 84, 14)  # 37 tokens
TINY_LLAMA_S = LanguageModelGeometry("Llama-tiny-S", "llama", 64, 2, 4, 4, 128, 256)
TINY_LLAMA_L = LanguageModelGeometry("Llama-tiny-L", "llama", 96, 3, 6, 6, 192, 256)
TINY_MISTRAL = LanguageModelGeometry("Mistral-tiny", "mistral", 64, 2, 4, 2, 160, 256)
TINY_15_BUDGETS = (Budget(6, 2), Budget(9, 3), Budget(12, 4))
TINY_NEXT_BUDGETS = (Budget(3, 1), Budget(6, 2), Budget(9, 3))


def tiny_geometries() -> tuple[ModelGeometry, ...]:
    """The same four models at toy sizes (CI smoke test; their timings are not claims)."""
    prompt = dict(batches=(1, 2), system_tokens=5, question_tokens=7)
    return (
        ModelGeometry("LLaVA-1.5-7B", TINY_ENCODER, 1, TINY_15_BUDGETS, TINY_LLAMA_S, **prompt),
        ModelGeometry("LLaVA-1.5-13B", TINY_ENCODER, 1, TINY_15_BUDGETS, TINY_LLAMA_L, **prompt),
        ModelGeometry("LLaVA-NeXT-7B", TINY_ENCODER, 5, TINY_NEXT_BUDGETS, TINY_MISTRAL, **prompt),
        ModelGeometry("LLaVA-NeXT-13B", TINY_ENCODER, 5, TINY_NEXT_BUDGETS, TINY_LLAMA_L, **prompt),
    )
