"""VisionZip in LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): images and videos.

Two methods of the inner ``LlavaOnevisionModel`` instance are replaced, ``get_image_features`` and
``get_video_features`` (the model's ``forward`` and ``generate``'s pre-encoding call them; the
placeholder checks and the merge into the text embeddings are left as they are). The SigLIP tower
has no CLS token, so a token's importance is the mean attention it receives (``zip_tokens`` with
``has_cls=False``), and VisionZip reads the layer the model reads: ``vision_feature_layer``, ``-1``
in the released checkpoints, whose tower is SigLIP-SO400M with its last layer removed (26 layers).
The processor (``processor.py``) writes the same counts, from the functions below. ``t`` is
``dominant + contextual``, the tokens kept per image crop and per video frame.

Images. A prompt with one image gets LLaVA-OneVision's ``anyres_max_9`` crops: the base image plus
a ``rows x cols`` grid of crops (``select_best_resolution`` among ``image_grid_pinpoints``, up to
6 x 6 in the released checkpoints). Each crop is zipped on its own to ``t`` tokens and projected,
and the image's features are laid out as LLaVA-NeXT's (``llava_next.py``)::

    base crop (t)
    crop (0, 0) (t)  ...  crop (0, cols-1) (t)  image_newline (1)
    ...
    crop (rows-1, 0) (t)  ...  crop (rows-1, cols-1) (t)  image_newline (1)

``t * (1 + rows * cols) + rows`` tokens. The stock model lays the crops' patches out on one feature
grid, drops the grid rows or columns that fall on the padding the image processor added
("unpadding"), shrinks the grid bilinearly to about nine crops' worth when it is larger
(``anyres_max_9``), and closes each row of patches with ``image_newline``. Zipped tokens have no
place on that grid (the contextual tokens merge patches from anywhere in the crop), so neither
unpadding nor the shrinking applies: padding patches compete for selection like any other (a
uniform padding patch rarely draws attention) and otherwise fold into the contextual tokens, the
newline closes each row of crops, and the count depends only on the image size. At ``t = 73``
(10% of 729) a 3 x 4 grid gives 952 tokens where the stock model gives 7,309 for a 1152 x 1536
image. A prompt with several images gets the base crop only for each (as the stock model):
``t + 1`` tokens, the base crop's then ``image_newline``.

Videos. Every frame goes through the tower on its own; the stock model projects each frame's 729
tokens, pools them 2 x 2 (bilinear, 27 x 27 -> 14 x 14 = 196) and puts one ``image_newline`` after
the last frame. Here each frame's tower tokens are zipped to ``t`` **before** the pooling, then
projected, and the pooling is not run: a video's features are its frames' ``t`` tokens in frame
order and one ``image_newline``, ``frames * t + 1`` tokens. Zipping before the pooling, because

- the attention VisionZip ranks tokens by is the tower's, over the tower's tokens: after the
  pooling there is no attention to rank pooled tokens by, only an interpolation of it;
- the dominant tokens stay single, unblurred patches and the contextual tokens merge the rest by
  key similarity, where a pooled token is a fixed blend of about four neighbours (the pooling is a
  fixed 3.7x reduction that VisionZip, an adaptive one, replaces);
- the projector then runs on ``t`` tokens per frame instead of 729, and the budget can range over
  the tower's 729 tokens rather than the 196 pooled ones.

The paper applies VisionZip to video frame by frame on the encoder's tokens (Video-LLaVA, whose
frames are not pooled); ``benchmarks/bench_onevision_pooling.py`` measures both choices on the tiny
test model's token counts.
"""
from __future__ import annotations

import functools

import torch
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

from .budget import Budget
from .encoder import layer_number, visionzip_features
from .handle import InstancePatch, bind_methods
from .llava_next import crop_grid, llava_next_image_tokens, pack_image, stacked_crops
from .vision_model import LANGUAGE_MODEL_OPTIONS, VisionZipOutput, pop_return_dict


def onevision_image_tokens(tokens_per_crop: int, rows: int, cols: int) -> int:
    """Tokens of one image of a one-image prompt: base crop, ``rows x cols`` crops, a newline per row."""
    return llava_next_image_tokens(tokens_per_crop, rows, cols)


def base_crop_image_tokens(tokens_per_crop: int) -> int:
    """Tokens of one image of a several-image prompt: its base crop, then ``image_newline``."""
    return tokens_per_crop + 1


def onevision_video_tokens(tokens_per_frame: int, frames: int) -> int:
    """Tokens of one video: each frame's zipped tokens, then one ``image_newline``."""
    return frames * tokens_per_frame + 1


def check_one_feature_layer(layer, vision_config, caller: str) -> None:
    """Raise ``ValueError`` unless ``layer`` is one index of an encoder layer's output."""
    if isinstance(layer, (list, tuple)):
        raise ValueError(
            f"{caller}: VisionZip reads one vision layer, so `vision_feature_layer` must be an int, "
            f"got {layer!r}"
        )
    try:
        layer_number(layer, vision_config.num_hidden_layers)
    except ValueError as error:
        raise ValueError(f"{caller}: `vision_feature_layer`: {error}") from None


def zip_and_project(model, pixel_values: torch.Tensor, budget: Budget, layer: int):
    """Zip each of ``pixel_values`` ``[C, 3, H, W]`` (crops or frames), then project them.

    Returns ``(tokens [C, t, D_vision], dominant_idx [C, dominant], features [C, t, D_text])``.
    """
    tokens, dominant_idx = visionzip_features(
        model.vision_tower,
        pixel_values,
        budget.dominant,
        budget.contextual,
        backend=budget.backend,
        layer=layer,
    )
    return tokens, dominant_idx, model.multi_modal_projector(tokens)


def _feature_layer(model, vision_feature_layer, caller: str) -> int:
    """The layer to read: the argument if given (checked), else the model's config."""
    if vision_feature_layer is None:
        return model.config.vision_feature_layer
    check_one_feature_layer(vision_feature_layer, model.config.vision_config, caller)
    return vision_feature_layer


def crops_per_image(config, image_sizes, batch_num_images) -> list[int]:
    """Crops of each image: base + grid for an image alone in its prompt, the base only otherwise."""
    if batch_num_images is None:
        alone = [True] * len(image_sizes)
    else:
        alone = [int(n) == 1 for n in batch_num_images for _ in range(int(n))]
    crop_size = config.vision_config.image_size
    return [
        image_size_to_num_patches(size, config.image_grid_pinpoints, crop_size) if single else 1
        for size, single in zip(image_sizes, alone)
    ]


def get_image_features(
    model,
    pixel_values: torch.Tensor,
    image_sizes,
    vision_feature_layer=None,
    vision_feature_select_strategy=None,
    vision_aspect_ratio=None,
    batch_num_images=None,
    *,
    budget: Budget,
    **kwargs,
):
    """The replacement ``LlavaOnevisionModel.get_image_features``.

    pixel_values: ``[B, max_crops, 3, H, W]`` (padded per image) or ``[total_crops, 3, H, W]``;
    image_sizes: ``[B, 2]`` original ``(height, width)``; batch_num_images: images per prompt
    (``None``: every image alone in its prompt). Returns a ``VisionZipOutput``: ``pooler_output``
    the list of ``B`` features laid out as in the module docstring; ``last_hidden_state``
    ``[total_crops, t, D_vision]`` the zipped tokens of every crop before the projector;
    ``dominant_idx`` ``[total_crops, dominant]``. ``vision_feature_select_strategy`` and
    ``vision_aspect_ratio`` are accepted and ignored (SigLIP has no CLS token to drop; zipped
    tokens have no grid to shrink). ``return_dict=False`` returns the output's tuple.
    """
    caller = "VisionZip get_image_features"
    layer = _feature_layer(model, vision_feature_layer, caller)
    return_dict = pop_return_dict(kwargs, caller, ignored=LANGUAGE_MODEL_OPTIONS)
    config = model.config
    num_crops = crops_per_image(config, image_sizes, batch_num_images)
    pixel_values = stacked_crops(pixel_values, num_crops, caller)

    tokens, dominant_idx, features = zip_and_project(model, pixel_values, budget, layer)
    crop_size = config.vision_config.image_size
    newline = model.image_newline
    image_features = []
    for size, crops in zip(image_sizes, torch.split(features, num_crops, dim=0)):
        if crops.shape[0] == 1:
            newline_row = newline.to(device=crops.device, dtype=crops.dtype)[None]
            image_features.append(torch.cat([crops[0], newline_row], dim=0))
            continue
        rows, cols = crop_grid(size, config.image_grid_pinpoints, crop_size, crop_size)
        image_features.append(pack_image(crops, rows, cols, newline))
    output = VisionZipOutput(
        last_hidden_state=tokens, pooler_output=image_features, dominant_idx=dominant_idx
    )
    return output.to_tuple() if return_dict is False else output


def get_video_features(
    model,
    pixel_values_videos: torch.Tensor,
    vision_feature_layer=None,
    vision_feature_select_strategy=None,
    vision_aspect_ratio=None,
    *,
    budget: Budget,
    **kwargs,
):
    """The replacement ``LlavaOnevisionModel.get_video_features``.

    pixel_values_videos: ``[B, frames, 3, H, W]``. Returns a ``VisionZipOutput``:
    ``pooler_output`` ``[B, frames * t + 1, D_text]`` (a tensor, as the stock method returns), each
    video's frames' zipped and projected tokens in frame order, then ``image_newline``;
    ``last_hidden_state`` ``[B * frames, t, D_vision]`` the zipped tokens of every frame before the
    projector; ``dominant_idx`` ``[B * frames, dominant]``. ``vision_feature_select_strategy`` and
    ``vision_aspect_ratio`` (which the outer model's method fills in from its config) are accepted
    and ignored. ``return_dict=False`` returns the tuple.
    """
    caller = "VisionZip get_video_features"
    layer = _feature_layer(model, vision_feature_layer, caller)
    return_dict = pop_return_dict(kwargs, caller, ignored=LANGUAGE_MODEL_OPTIONS)
    if pixel_values_videos.dim() != 5:
        raise ValueError(
            f"{caller}: `pixel_values_videos` must be [B, frames, 3, H, W], "
            f"got shape {tuple(pixel_values_videos.shape)}"
        )
    batch, frames = pixel_values_videos.shape[:2]
    tokens, dominant_idx, features = zip_and_project(
        model, pixel_values_videos.flatten(0, 1), budget, layer
    )
    per_video = features.reshape(batch, frames * budget.tokens, features.shape[-1])
    newline = model.image_newline.to(device=features.device, dtype=features.dtype)
    video_features = torch.cat([per_video, newline.expand(batch, 1, -1)], dim=1)
    output = VisionZipOutput(
        last_hidden_state=tokens, pooler_output=video_features, dominant_idx=dominant_idx
    )
    return output.to_tuple() if return_dict is False else output


def patch_llava_onevision(model, budget: Budget) -> list[InstancePatch]:
    """Replace ``get_image_features`` and ``get_video_features`` on the ``LlavaOnevisionModel``
    instance; the patches undo it."""
    check_one_feature_layer(
        model.config.vision_feature_layer, model.config.vision_config, "apply_visionzip"
    )
    methods = {
        "get_image_features": functools.partial(get_image_features, budget=budget),
        "get_video_features": functools.partial(get_video_features, budget=budget),
    }
    return bind_methods(model, methods, owner_arg="model")
