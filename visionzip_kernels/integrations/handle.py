"""Instance-level patches and the handle that undoes them.

``apply_visionzip`` never touches a class: it sets a few attributes on the model's and the
processor's *instances* (a replacement method bound to that one object). Removing such an attribute
makes Python find the class's own method again, so undoing is exact: the objects' ``__dict__`` and
every output are what they were before.
"""
from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class InstancePatch:
    """One replaced attribute: ``owner.<name>`` is ``value``, shadowing the class's attribute."""

    owner: Any
    name: str
    value: Any

    def restore(self) -> None:
        """Delete the instance attribute, if still ours: the class's attribute shows again."""
        if vars(self.owner).get(self.name) is self.value:
            delattr(self.owner, self.name)


@dataclass(frozen=True)
class AttributeSnapshot:
    """An instance attribute's value when VisionZip was applied, put back on removal (an attribute
    that VisionZip or the model itself overwrites while VisionZip is applied)."""

    owner: Any
    name: str
    value: Any

    def restore(self) -> None:
        setattr(self.owner, self.name, self.value)


def bind_methods(owner: Any, functions: dict[str, Callable], owner_arg: str) -> list[InstancePatch]:
    """Set ``owner.<name>`` to each ``functions[name]`` bound to ``owner``; return the patches.

    Each ``function(owner, *args, **kwargs)`` is bound with ``types.MethodType``, so a
    ``copy.deepcopy`` of ``owner`` gets methods bound to the copy. ``owner_arg`` names ``owner`` in
    errors. All names are checked before any is set.

    Raises ``ValueError`` when ``owner`` already has an instance attribute of one of the names:
    VisionZip is already applied, or another library (e.g. accelerate's hooks on ``forward``)
    replaced it, and stacking patches would make undoing ambiguous.
    """
    for name in functions:
        if name in vars(owner):
            raise ValueError(
                f"apply_visionzip: `{owner_arg}` already has its own `{name}` attribute on the "
                "instance (VisionZip is already applied, or another library replaced it); call "
                "`.remove()` on the handle of the earlier apply_visionzip first"
            )
    patches = []
    for name, function in functions.items():
        value = types.MethodType(function, owner)
        setattr(owner, name, value)
        patches.append(InstancePatch(owner, name, value))
    return patches


def patch_model_and_processor(
    model, inner, methods: dict[str, Callable], processor, patch_processor: Callable[[], list], budget
) -> VisionZipHandle:
    """Bind ``methods`` on ``inner`` (``bind_methods``), then run ``patch_processor()`` unless
    ``processor`` is ``None``, and return the handle of all their patches. If the processor's
    patching fails, the model's patches are undone before the error propagates: both objects are
    patched, or neither."""
    patches = bind_methods(inner, methods, owner_arg="model")
    if processor is not None:
        try:
            patches += patch_processor()
        except Exception:
            for patch in reversed(patches):
                patch.restore()
            raise
    return VisionZipHandle(model, processor, budget, patches)


class VisionZipHandle:
    """What ``apply_visionzip`` changed, and how to undo it.

    Attributes: ``model`` and ``processor`` (``None`` if none was given), ``budget`` (the
    ``Budget``: ``dominant``, ``contextual``, ``tokens`` per image or LLaVA-NeXT crop, ``backend``),
    ``active`` (``False`` once removed).

    ``remove()`` restores the model and the processor exactly; calling it again does nothing.
    The handle is also a context manager: ``with apply_visionzip(model, processor): ...`` removes
    VisionZip on leaving the block; entering a removed handle raises ``RuntimeError``.
    """

    def __init__(self, model, processor, budget, patches: list[InstancePatch]):
        self.model = model
        self.processor = processor
        self.budget = budget
        self._patches = list(patches)

    @property
    def active(self) -> bool:
        return bool(self._patches)

    def remove(self) -> None:
        """Undo every patch, last applied first."""
        while self._patches:
            self._patches.pop().restore()

    def __enter__(self) -> VisionZipHandle:
        if not self.active:
            raise RuntimeError(
                "VisionZipHandle: this handle was removed, so VisionZip is not applied; call "
                "apply_visionzip again to use it"
            )
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return (
            f"VisionZipHandle({type(self.model).__name__}, dominant={self.budget.dominant}, "
            f"contextual={self.budget.contextual}, {state})"
        )
