"""How many visual tokens an image becomes with VisionZip, and in which order.

The model (``llava.py``, ``llava_next.py``) and the processor (``processor.py``) both count with
these functions, so the placeholders the processor writes and the features the model scatters into
them agree exactly. ``t = dominant + contextual`` is the budget per crop.

LLaVA-1.5: an image is one crop, ``t`` tokens (the dominant tokens in ascending index order, the
CLS token first, then the contextual tokens).

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

from transformers.image_processing_utils import select_best_resolution


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
