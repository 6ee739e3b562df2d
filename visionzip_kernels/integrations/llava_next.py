"""VisionZip in LLaVA-NeXT (``LlavaNextForConditionalGeneration``): each crop is zipped tokens.

As for LLaVA-1.5 (``llava.py``) the one method replaced is ``get_image_features`` of the inner
``LlavaNextModel`` instance. Each crop of an image (the base crop and every high-resolution crop)
is zipped on its own to ``dominant + contextual`` tokens (the CLS token kept among the dominant
tokens, whatever ``vision_feature_select_strategy`` says) and projected; an image's features are
then laid out as below. The processor (``processor.py``) writes the same number of placeholders,
from the same functions (``crop_grid``, ``llava_next_image_tokens``).

Unlike the published code, this works for any crop grid (``image_grid_pinpoints``) and encoder
size, and keeps the newline tokens.

LLaVA-NeXT: an image is a base crop (the whole image, resized) plus a ``rows x cols`` grid of
high-resolution crops, the grid picked by ``select_best_resolution`` among ``image_grid_pinpoints``
(the crops come in row-major order, as the image processor cuts them). Each crop is zipped on its
own to ``t`` tokens, and the image's features are laid out as::

    base crop (t)
    crop (0, 0) (t)  crop (0, 1) (t)  ...  crop (0, cols-1) (t)  image_newline (1)
    ...
    crop (rows-1, 0) (t)  ...  crop (rows-1, cols-1) (t)  image_newline (1)

that is, ``t * (1 + rows * cols) + rows`` tokens: one ``image_newline`` closes each row of crops,
as in LLaVA-NeXT, where it closes each row of patches. Zipped tokens have no place on the
patch grid (the contextual tokens merge patches from anywhere in the crop), so the newline marks
rows of crops; and no token is dropped as padding (LLaVA-NeXT's "unpad" step), so the count depends
only on the image size, never on which tokens were kept.
"""
from __future__ import annotations

import torch
from transformers.image_processing_utils import select_best_resolution
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from .budget import Budget
from .llava import check_feature_layer, patch_image_features
from .vision_model import LANGUAGE_MODEL_OPTIONS, VisionZipOutput, pop_return_dict


def host_image_sizes(image_sizes) -> list[tuple[int, int]]:
    """``image_sizes`` (a ``[B, 2]`` tensor or array, or ``(height, width)`` pairs) as Python ints.

    The crop counts these sizes decide are host values (they size the split of the features), so
    a tensor is read once here: one device read, and under ``torch.compile`` one graph break,
    where tracing each size through ``select_best_resolution`` would guard on data-dependent values.
    """
    if hasattr(image_sizes, "tolist"):
        image_sizes = image_sizes.tolist()
    return [(int(height), int(width)) for height, width in image_sizes]


def crop_grid(image_size, grid_pinpoints, crop_height: int, crop_width: int) -> tuple[int, int]:
    """``(rows, cols)`` of LLaVA-NeXT's high-resolution crops for an image of ``image_size``.

    image_size: ``(height, width)`` of the original image (ints, or a 2-element tensor/array);
    grid_pinpoints: the candidate resolutions ``[[height, width], ...]``; crop_height/width: the
    size of one crop (the vision encoder's ``image_size``).
    """
    if hasattr(image_size, "tolist"):
        image_size = image_size.tolist()
    best_height, best_width = select_best_resolution(list(image_size), grid_pinpoints)
    return best_height // crop_height, best_width // crop_width


def llava_next_image_tokens(tokens_per_crop: int, rows: int, cols: int) -> int:
    """Tokens of one LLaVA-NeXT image: base crop, ``rows x cols`` crops, one newline per row."""
    return tokens_per_crop * (1 + rows * cols) + rows


def pack_image(crops: torch.Tensor, rows: int, cols: int, newline: torch.Tensor) -> torch.Tensor:
    """One image's features in the order of the module docstring.

    crops: ``[1 + rows * cols, t, D]`` the base crop then the high-resolution crops, row-major;
    newline: ``[D]``. Returns ``[t * (1 + rows * cols) + rows, D]``.
    """
    base, grid = crops[0], crops[1:]
    width = crops.shape[-1]
    crop_rows = grid.reshape(rows, cols * crops.shape[1], width)
    newlines = newline.to(device=crops.device, dtype=crops.dtype).expand(rows, 1, width)
    return torch.cat([base, torch.cat([crop_rows, newlines], dim=1).flatten(0, 1)], dim=0)


def crop_grids(config, image_sizes, caller: str) -> list[tuple[int, int]]:
    """The ``(rows, cols)`` crop grid of each image of ``image_sizes`` under ``config``.

    Raises ``ValueError`` where the image processor cuts a number of crops (LLaVA-NeXT's
    ``image_size_to_num_patches``) that is not ``1 + rows * cols``.
    """
    crop_size = config.vision_config.image_size
    grids = []
    for size in host_image_sizes(image_sizes):
        rows, cols = crop_grid(size, config.image_grid_pinpoints, crop_size, crop_size)
        crops = image_size_to_num_patches(size, config.image_grid_pinpoints, crop_size)
        if rows * cols != crops - 1:
            raise ValueError(
                f"{caller}: an image of size {size} has {crops - 1} high-resolution crops, not "
                f"the {rows} x {cols} grid its `image_grid_pinpoints` give"
            )
        grids.append((rows, cols))
    return grids


def stacked_crops(pixel_values: torch.Tensor, num_crops: list[int], caller: str) -> torch.Tensor:
    """Every image's crops one after another, ``[sum(num_crops), 3, H, W]``: from the processor's
    padded ``[B, max crops, 3, H, W]`` (each image's first ``num_crops[i]``), or as given when
    already ``[crops, 3, H, W]``."""
    if pixel_values.dim() == 5:
        return torch.cat([pixels[:count] for pixels, count in zip(pixel_values, num_crops)], dim=0)
    if pixel_values.dim() != 4:
        raise ValueError(
            f"{caller}: `pixel_values` must be [B, crops, 3, H, W] or [crops, 3, H, W], "
            f"got shape {tuple(pixel_values.shape)}"
        )
    return pixel_values


def get_image_features(
    llava_model,
    pixel_values: torch.Tensor,
    image_sizes,
    vision_feature_layer=None,
    vision_feature_select_strategy=None,
    *,
    project,
    **kwargs,
):
    """The replacement ``LlavaNextModel.get_image_features``.

    pixel_values: ``[B, max_crops, 3, H, W]`` (padded per image) or ``[total_crops, 3, H, W]``;
    image_sizes: ``[B, 2]`` original ``(height, width)`` of each image.
    Returns a ``VisionZipOutput``: ``pooler_output`` the list of ``B`` packed features
    ``[t * (1 + rows * cols) + rows, D_text]``; ``last_hidden_state``
    ``[total_crops, t, D_vision]`` the zipped tokens of every crop before the projector;
    ``dominant_idx`` ``[total_crops, dominant]``. ``return_dict=False`` returns the tuple.
    """
    caller = "VisionZip get_image_features"
    config = llava_model.config
    if vision_feature_layer is not None:
        check_feature_layer(vision_feature_layer, config.vision_config, caller)
    return_dict = pop_return_dict(kwargs, caller, ignored=LANGUAGE_MODEL_OPTIONS)
    grids = crop_grids(config, image_sizes, caller)
    num_crops = [1 + rows * cols for rows, cols in grids]
    pixel_values = stacked_crops(pixel_values, num_crops, caller)
    if pixel_values.shape[0] != sum(num_crops):
        raise ValueError(
            f"{caller}: `pixel_values` holds {pixel_values.shape[0]} crops, but `image_sizes` and "
            f"`image_grid_pinpoints` give {sum(num_crops)} ({num_crops} per image)"
        )

    tokens, dominant_idx, features = project(llava_model, pixel_values)
    image_features = [
        pack_image(crops, rows, cols, llava_model.image_newline)
        for crops, (rows, cols) in zip(torch.split(features, num_crops, dim=0), grids)
    ]
    output = VisionZipOutput(
        last_hidden_state=tokens, pooler_output=image_features, dominant_idx=dominant_idx
    )
    return output.to_tuple() if return_dict is False else output


def patch_llava_next(llava_model, budget: Budget, graph_cache_size: int | None = None) -> list:
    """Replace ``get_image_features`` on the ``LlavaNextModel`` instance; the patches undo it."""
    return patch_image_features(llava_model, budget, get_image_features, graph_cache_size)
