"""VisionZip in a Qwen-VL model: the three methods of the inner model instance that are replaced.

On the inner ``Qwen2_5_VLModel`` / ``Qwen3VLModel`` (which both the model's ``forward`` and
``generate`` call):

- ``get_image_features``: the model's own method runs the encoder (its attention implementation in
  every block), then each image is zipped (``qwen_vl.zip_images``). It returns the model's output
  type with ``pooler_output`` (and Qwen3-VL's ``deepstack_features``) holding each image's kept
  tokens, plus ``kept_idx``. ``forward`` merges them into the placeholders as usual.
- ``get_rope_index``: the kept tokens' original M-RoPE positions (``qwen_vl_positions``).
- ``get_video_features``: refuses videos (VisionZip here zips still images).

``get_rope_index`` needs the kept indices, which only the encoder knows. ``forward`` encodes the
images before it computes positions, but ``generate`` computes positions first (from the same
``pixel_values``) and encodes afterwards. So the replaced ``get_rope_index`` encodes the images
itself when it is given ``pixel_values``, and leaves its result in a one-use ``ZipMemo`` that the
next ``get_image_features`` of the very same ``pixel_values`` tensor (same object, unmodified, same
grid) takes instead of encoding again: the encoder runs once per ``generate``. Without
``pixel_values``, ``get_rope_index`` reads the kept indices of ``mm_encoder_outputs`` where given,
else those of the last images this model zipped, if their grid matches.
"""
from __future__ import annotations

import functools
import inspect
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .budget import Budget, check_largest_image, make_fraction_budget
from .handle import AttributeSnapshot, VisionZipHandle, bind_methods
from .processor import check_processor
from .qwen_vl import capture_last_block, grid_sizes, zip_images
from .qwen_vl_positions import kept_rope_index
from .qwen_vl_processor import largest_image, patch_qwen_vl_processor


@dataclass(frozen=True)
class QwenFamily:
    """What differs between the Qwen-VL families VisionZip supports.

    name: in messages. model_classes: ``(ForConditionalGeneration, Model)``. processor_class: the
    processor ``apply_visionzip`` accepts. output_class: the model's ``get_image_features`` output
    type plus a ``kept_idx`` field. window_index: ``(visual, image_grid_thw) -> [T_total] or
    None``, the raster merge unit of each unit in the encoder's order (``None``: raster already).
    """

    name: str
    model_classes: tuple[type, type]
    processor_class: type
    output_class: type
    window_index: Callable[[Any, torch.Tensor], torch.Tensor | None]


def version_of(tensor: torch.Tensor) -> int | None:
    """The tensor's in-place version counter; ``None`` for an inference tensor, which has none."""
    return None if tensor.is_inference() else tensor._version


class ZipMemo:
    """The last images one model zipped: their kept indices, and the whole output until used once.

    Holds a weak reference to the ``pixel_values`` tensor, never the tensor itself; a tensor changed
    in place since is another input (except an inference tensor, which counts no changes).
    """

    def __init__(self):
        self._pixels = None
        self._version = None
        self._grid = None
        self._output = None
        self._kept_idx = None

    def store(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, output, keep_output: bool):
        """Remember ``output`` (its ``kept_idx`` always; the whole output if ``keep_output``)."""
        self._pixels = weakref.ref(pixel_values)
        self._version = version_of(pixel_values)
        self._grid = image_grid_thw.detach().cpu().clone()
        self._output = output if keep_output else None
        self._kept_idx = output.kept_idx

    def take(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor):
        """The stored output if it was made from this very ``pixel_values`` and grid, once; else None."""
        if self._output is None or self._pixels() is not pixel_values:
            return None
        if version_of(pixel_values) != self._version or not self.same_grid(image_grid_thw):
            return None
        output, self._output = self._output, None
        return output

    def same_grid(self, image_grid_thw: torch.Tensor) -> bool:
        return self._grid is not None and torch.equal(image_grid_thw.detach().cpu(), self._grid)

    def kept_idx(self, image_grid_thw: torch.Tensor):
        """The kept indices of the last zipped images, if their grid is ``image_grid_thw``."""
        return self._kept_idx if self.same_grid(image_grid_thw) else None


class QwenVisionZip:
    """The VisionZip state of one patched inner model: its family, budget and ``ZipMemo``."""

    def __init__(self, inner, family: QwenFamily, budget: Budget):
        self.inner = inner
        self.family = family
        self.budget = budget
        self.memo = ZipMemo()

    def zip(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None, kwargs: dict):
        """The model's ``get_image_features`` output for these images, zipped."""
        caller = f"VisionZip get_image_features ({self.family.name})"
        if image_grid_thw is None:
            raise ValueError(f"{caller}: `image_grid_thw` is required with `pixel_values`")
        inner = self.inner
        merge_unit = inner.visual.spatial_merge_size**2
        patch_sizes = grid_sizes(image_grid_thw, merge_unit, caller)
        with capture_last_block(inner.visual) as captured:
            output = type(inner).get_image_features(
                inner, pixel_values, image_grid_thw, return_dict=True, **kwargs
            )
        deepstack = [torch.cat(layer) for layer in getattr(output, "deepstack_features", None) or []]
        zipped = zip_images(
            captured["attention"],
            torch.cat(output.pooler_output),
            deepstack,
            patch_sizes,
            merge_unit,
            self.family.window_index(inner.visual, image_grid_thw),
            self.budget,
        )
        fields = dict(output.items())
        fields.update(pooler_output=zipped.features, kept_idx=zipped.kept_idx)
        if deepstack:
            fields["deepstack_features"] = list(zipped.deepstack)
        return self.family.output_class(**fields)

    def image_features(self, pixel_values, image_grid_thw, kwargs: dict):
        """The memo's output for these very pixels, else a fresh ``zip`` (remembered)."""
        output = self.memo.take(pixel_values, image_grid_thw)
        if output is None:
            output = self.zip(pixel_values, image_grid_thw, kwargs)
            self.memo.store(pixel_values, image_grid_thw, output, keep_output=False)
        return output

    def kept_for_positions(self, image_grid_thw: torch.Tensor, kwargs: dict) -> list[list[int]]:
        """Each image's kept raster indices, for ``get_rope_index`` (see the module docstring)."""
        encoded = (kwargs.get("mm_encoder_outputs") or {}).get("image")
        kept_idx = getattr(encoded, "kept_idx", None)
        pixel_values = kwargs.get("pixel_values")
        if kept_idx is None and pixel_values is not None:
            output = self.memo.take(pixel_values, image_grid_thw)
            if output is None:
                output = self.zip(pixel_values, image_grid_thw, {})
            self.memo.store(pixel_values, image_grid_thw, output, keep_output=True)
            kept_idx = output.kept_idx
        if kept_idx is None:
            kept_idx = self.memo.kept_idx(image_grid_thw)
        if kept_idx is None:
            raise ValueError(
                f"VisionZip get_rope_index ({self.family.name}): the kept tokens of these images are "
                "not known yet; pass `pixel_values` (or `mm_encoder_outputs` from the patched "
                "get_image_features), or run the model on the images first"
            )
        return [idx.tolist() for idx in kept_idx]


def get_image_features(inner, pixel_values, image_grid_thw=None, *, state: QwenVisionZip, **kwargs):
    """The replacement ``get_image_features``: each image's kept tokens (module docstring).

    ``return_dict=False`` returns the output's tuple.
    """
    return_dict = kwargs.pop("return_dict", None)
    output = state.image_features(pixel_values, image_grid_thw, kwargs)
    return output.to_tuple() if return_dict is False else output


def get_video_features(
    inner, pixel_values_videos=None, video_grid_thw=None, *, state: QwenVisionZip, **kwargs
):
    """The replacement ``get_video_features``: a ``ValueError``, videos are not zipped."""
    raise ValueError(
        f"VisionZip ({state.family.name}) zips still images only; video inputs are not supported "
        "while it is applied. Call `handle.remove()` for video inputs"
    )


def get_rope_index(inner, *args, state: QwenVisionZip, **kwargs):
    """The replacement ``get_rope_index``: the model's signature, kept tokens at their original
    positions (``qwen_vl_positions.kept_rope_index``); the model's own method without images."""
    original = functools.partial(type(inner).get_rope_index, inner)
    arguments = inspect.signature(type(inner).get_rope_index).bind(inner, *args, **kwargs).arguments
    arguments.pop("self")
    extra = arguments.pop("kwargs", {})
    image_grid_thw = arguments.pop("image_grid_thw", None)
    if image_grid_thw is None:
        return original(*args, **kwargs)
    if arguments.get("mm_token_type_ids") is None:
        raise ValueError(
            f"VisionZip get_rope_index ({state.family.name}): `mm_token_type_ids` is required with "
            "images (the processor returns it)"
        )
    kept_idx = state.kept_for_positions(image_grid_thw, extra)
    consumed = ("pixel_values", "mm_encoder_outputs")
    extra = {name: value for name, value in extra.items() if name not in consumed}
    return kept_rope_index(
        original,
        arguments.pop("input_ids"),
        arguments.pop("mm_token_type_ids"),
        image_grid_thw,
        kept_idx,
        inner.config.vision_config.spatial_merge_size,
        arguments.pop("attention_mask", None),
        caller=f"VisionZip get_rope_index ({state.family.name})",
        **arguments,
        **extra,
    )


def patch_qwen_vl(inner, family: QwenFamily, budget: Budget) -> list:
    """Replace the three methods on the inner model instance; the patches undo it."""
    state = QwenVisionZip(inner, family, budget)
    # the model's cached ``rope_deltas``, which ``generate`` overwrites with the reduced sequence's
    snapshot = AttributeSnapshot(inner, "rope_deltas", inner.rope_deltas)
    methods = {
        name: functools.partial(function, state=state)
        for name, function in (
            ("get_image_features", get_image_features),
            ("get_video_features", get_video_features),
            ("get_rope_index", get_rope_index),
        )
    }
    patches: list = [snapshot]
    patches += bind_methods(inner, methods, owner_arg="model")
    return patches


def apply_qwen_vl(
    model, processor, family: QwenFamily, dominant, contextual, backend: str
) -> VisionZipHandle:
    """``apply_visionzip`` for a model of ``family`` (its ``ForConditionalGeneration`` or inner
    ``Model``): check everything, then patch the inner model and the processor, or nothing."""
    outer, _ = family.model_classes
    inner = model.model if isinstance(model, outer) else model
    budget = make_fraction_budget(dominant, contextual, backend, next(inner.visual.parameters()).device)
    if processor is not None:
        check_processor(processor, family.processor_class, model, inner.config)
        check_largest_image(budget, *largest_image(processor))
    patches = patch_qwen_vl(inner, family, budget)
    if processor is not None:
        try:
            patches += patch_qwen_vl_processor(processor, budget)
        except Exception:
            for patch in reversed(patches):
                patch.restore()
            raise
    return VisionZipHandle(model, processor, budget, patches)
