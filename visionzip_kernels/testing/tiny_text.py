"""The text side of the tiny random models that tests and ``--tiny`` benchmarks build: a
word-level tokenizer and a small decoder's configuration, shared by every model family.

Word ids are list positions; the first four words must be ``<pad>``, ``<s>``, ``</s>`` and ``<unk>``
(ids 0-3), which ``text_config_fields`` names as the pad, bos and eos ids.
"""
from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_WORDS = ("<pad>", "<s>", "</s>", "<unk>")


def word_tokenizer(words: list[str], special_tokens: dict[str, str]) -> PreTrainedTokenizerFast:
    """A tokenizer that splits on whitespace and maps each of ``words`` to its position, padding on
    the left; ``special_tokens`` names the model's own ones (``{"image_token": "<image>"}``)."""
    if tuple(words[:4]) != SPECIAL_WORDS:
        raise ValueError(f"word_tokenizer: the first words must be {SPECIAL_WORDS}, got {words[:4]}")
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=special_tokens,
        padding_side="left",
    )


def text_config_fields(vocab_size: int, max_position_embeddings: int = 512) -> dict:
    """A two-layer decoder of width 32 (4 query heads, 2 key/value heads) over ``vocab_size`` words."""
    return dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
