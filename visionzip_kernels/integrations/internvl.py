"""VisionZip on InternVL's vision path: every tile zipped on its own, after the pixel shuffle.

InternVL3 / InternVL3.5 (``InternVLForConditionalGeneration``) cut an image into 448-pixel tiles
(plus a thumbnail of the whole image when there are several) and encode each tile on its own with
InternViT: a CLS token and ``S x S`` patches (32 x 32). ``get_image_features`` takes the output of
layer ``vision_feature_layer`` (the last one by default), drops the CLS token, pixel-shuffles each
2x2 block of patches into one token (``downsample_ratio`` 0.5: 1024 patches, 256 tokens) and
projects the tokens for the language model: ``[tiles, 256, D]``.

Where VisionZip applies, and why:

- **the statistic**: the attention the CLS query of the layer the features come from gives each
  patch, ``attention_importance(q, k, has_cls=True)`` on that layer's own queries and keys (read by
  hooks on its ``q_norm``/``k_norm`` outputs, as its attention computes them; no ``N x N`` map). Each
  tile has its own CLS token, which attends over that tile only, so a tile is the unit the
  statistic ranks: the paper's CLS-row importance, as for CLIP.
- **the tokens zipped**: the projector's output, the tokens the language model receives, each a
  pixel-shuffled 2x2 block of patches, as Qwen-VL's merged 2x2 units are. Zipping the patches
  before the shuffle would break the shuffle's ``S x S`` grid, so a block's importance and key are
  the mean of its four patches' (the model's own ``pixel_shuffle`` groups them, ``pool_merge_units``
  averages them), then ``zip_tokens`` keeps the dominant tokens and merges the others into the
  contextual ones, ``has_cls=False``: the CLS token is never a feature.
- **the budget**: tokens per tile, the same for every tile, since every tile has the same 256
  tokens; the thumbnail is a tile to the encoder (its own CLS, its own 256 tokens) and is zipped
  like the others, keeping the global view at the same share.
"""
from __future__ import annotations

import contextlib

import torch

from ..ops.attention_importance import attention_importance
from ..ops.attention_importance.op import BACKENDS as IMPORTANCE_BACKENDS
from ..ops.attention_importance_varlen import pool_merge_units
from ..ops.zip_tokens import zip_tokens
from .budget import Budget
from .encoder import layer_number


def tile_tokens(config) -> int:
    """Tokens per tile of an ``InternVLConfig``: ``(image_size / patch_size * downsample_ratio)^2``."""
    vision = config.vision_config
    side = vision.image_size[0] // vision.patch_size[0]
    return int(side * config.downsample_ratio) ** 2


def feature_layer_attention(inner, layer: int):
    """The attention module of the vision layer whose output is ``hidden_states[layer]``."""
    layers = inner.vision_tower.encoder.layer
    return layers[layer_number(layer, len(layers)) - 1].attention


@contextlib.contextmanager
def capture_queries_keys(attention):
    """Within the block, hooks on ``attention.q_norm`` / ``k_norm`` fill the yielded dict with
    ``"query"`` and ``"key"``: ``[B, N, H * hd]``, the queries and keys the layer attends with."""
    captured: dict = {}
    handles = [
        attention.q_norm.register_forward_hook(lambda module, args, output: captured.update(query=output)),
        attention.k_norm.register_forward_hook(lambda module, args, output: captured.update(key=output)),
    ]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def block_mean(inner, per_patch: torch.Tensor) -> torch.Tensor:
    """``[B, S*S, C]`` per-patch rows (raster order, no CLS) -> ``[B, T, C]`` float32: each token's
    mean over the patches the model's ``pixel_shuffle`` puts into it (``T = S*S * ratio^2``)."""
    batch, patches, channels = per_patch.shape
    side = int(patches**0.5)
    grid = per_patch.contiguous().view(batch, side, side, channels)
    shuffled = inner.pixel_shuffle(grid, scale_factor=inner.config.downsample_ratio)
    block = round(1 / inner.config.downsample_ratio**2)
    pooled = pool_merge_units(shuffled.reshape(-1, channels), unit=block)
    return pooled.view(batch, -1, channels)


def zip_tiles(
    inner, features: torch.Tensor, query: torch.Tensor, key: torch.Tensor, attention, budget: Budget
) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionZip's tokens of ``B`` tiles: ``(tokens [B, K, D], dominant_idx [B, dominant])``.

    features: ``[B, T, D]`` the projector's output; query, key: ``[B, 1 + S*S, H * hd]`` the
    feature layer's (CLS first); attention: that layer's attention module (heads, scale).
    ``dominant_idx`` indexes the tile's ``T`` tokens (raster order of the shuffled grid).
    """
    batch, tokens, _ = query.shape
    heads = attention.num_heads
    query_heads = query.view(batch, tokens, heads, -1).transpose(1, 2)
    key_heads = key.view(batch, tokens, heads, -1).transpose(1, 2)
    importance_backend = budget.backend if budget.backend in IMPORTANCE_BACKENDS.names else "auto"
    cls_row = attention_importance(
        query_heads, key_heads, True, float(attention.scale), backend=importance_backend
    )
    block_importance = block_mean(inner, cls_row[:, :, 1:].transpose(1, 2)).transpose(1, 2)
    block_keys = block_mean(inner, key[:, 1:]).view(batch, features.shape[1], heads, -1).transpose(1, 2)
    return zip_tokens(
        features,
        block_importance,
        budget.dominant,
        budget.contextual,
        block_keys,
        False,
        backend=budget.backend,
    )
