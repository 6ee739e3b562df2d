"""Argument checks shared by every op and every entry point, with messages that name the argument.

Each op's ``op.py`` builds its validation from these, and calls it from the Python function, the
``torch.ops`` kernels and the fake kernel alike, so all entry points accept and reject the same
inputs. ``caller`` (the op's name) starts every message.
"""
from __future__ import annotations

import math
import numbers
import operator

import numpy as np
import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_int(value, name: str, caller: str) -> int:
    """``value`` as an int: any integer type, a NumPy integer or an integer 0-d tensor, never a
    bool; otherwise ``TypeError``. Values outside int64 raise ``ValueError``."""
    if type(value) is int and -(2**63) <= value < 2**63:  # the common case, decided at once
        return value
    if isinstance(value, (bool, np.bool_)) or (
        isinstance(value, torch.Tensor) and value.dtype == torch.bool
    ):
        raise TypeError(f"{caller}: `{name}` must be an int, got bool")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{caller}: `{name}` must be an int, got {type(value).__name__}") from None
    if not -(2**63) <= number < 2**63:
        raise ValueError(f"{caller}: `{name}` must fit in 64 bits, got {number}")
    return number


def check_bool(value, name: str, caller: str) -> bool:
    """``value`` as a bool (Python or NumPy); any other type raises ``TypeError``."""
    if value is True or value is False:
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(f"{caller}: `{name}` must be a bool, got {type(value).__name__}")


def check_optional_float(value, name: str, caller: str) -> float | None:
    """``value`` as a finite float (any real number but a bool), or ``None``."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{caller}: `{name}` must be a float or None, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{caller}: `{name}` must be finite, got {value}")
    return float(value)


def check_float_tensor(tensor, name: str, caller: str, layouts: dict[int, str]) -> None:
    """A float32/float16/bfloat16 tensor of one of the ranks in ``layouts`` (rank -> shape in words)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{caller}: `{name}` must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{caller}: `{name}` must be float32, float16 or bfloat16, got {tensor.dtype}")
    if tensor.dim() not in layouts:
        raise ValueError(
            f"{caller}: `{name}` must be {' or '.join(layouts.values())}, got shape {tuple(tensor.shape)}"
        )


def check_nonempty_dims(tensor, name: str, caller: str, dims: dict[int, str]) -> None:
    """Each dimension in ``dims`` (index -> its name) of ``tensor`` is at least 1."""
    shape = tensor.shape
    if 0 not in shape:  # the common case, decided at once
        return
    for dim, dim_name in dims.items():
        if shape[dim] < 1:
            raise ValueError(f"{caller}: `{name}` must have {dim_name} >= 1, got shape {tuple(shape)}")


def check_same_device(tensors: dict, anchor: str, caller: str) -> None:
    """Every tensor in ``tensors`` (name -> tensor or None) is on the device of ``tensors[anchor]``."""
    device = tensors[anchor].device
    for name, tensor in tensors.items():
        if tensor is not None and name != anchor and tensor.device != device:
            raise ValueError(
                f"{caller}: `{name}` is on {tensor.device} but `{anchor}` is on {device}; "
                "all tensors must be on one device"
            )
