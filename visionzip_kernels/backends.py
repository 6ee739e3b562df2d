"""Backends of every op: which exist, where each runs, what ``"auto"`` picks, and their registration.

Every op folder (``ops/<op>/op.py``) makes one ``OpBackends`` and adds its backends to it. A
backend is either a Python function (the reference) or an op whose schema ``csrc/ops.cpp``
defines (``visionzip::_<op>_<backend>``): a C++/CUDA kernel registered in ``csrc/``, or a Python
kernel (Triton) registered here with ``add_python_kernel``. ``OpBackends`` then:

- lists the backends that run on a device, fastest first (``available``), and resolves a
  requested name into one of them, with an error that says why a backend cannot run (``resolve``);
- registers the op family with PyTorch (``register``): the fake kernel (output shapes, for
  ``torch.compile``) of the public op and of every backend op, and the public op's CPU and CUDA
  kernels, which validate and then run the ``"auto"`` choice. (Autograd formulas are C++, in
  ``csrc/``, so that calls without gradients run no Python: ``csrc/zip_tokens_autograd.cpp``.)

Triton kernels run on CUDA tensors, or on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1``, set before ``triton`` is imported); the same Python kernel serves both.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Callable

import torch

from . import _extension

# Where a backend runs: ``None`` on a device it runs on, otherwise the reason it does not.
RunsOn = Callable[[torch.device], "str | None"]


@functools.cache
def triton_importable() -> bool:
    """Whether the ``triton`` package can be imported (looked up once: a search of ``sys.path``
    costs hundreds of microseconds, more than a whole call of an op)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreter_on() -> bool:
    """Whether Triton kernels run through the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def on_any_device(device: torch.device) -> str | None:
    """Plain PyTorch: runs wherever PyTorch does."""
    return None


def on_cpu(device: torch.device) -> str | None:
    """The C++ CPU extension, always built."""
    return None if device.type == "cpu" else f"it runs on cpu tensors only, not {device.type}"


def on_triton_device(device: torch.device) -> str | None:
    """Triton: CUDA tensors compiled, CPU tensors interpreted."""
    if not triton_importable():
        return "the `triton` package is not installed (pip install triton)"
    interpreted = triton_interpreter_on()
    if device.type == "cpu" and not interpreted:
        return (
            "Triton runs CPU tensors only through its interpreter: set TRITON_INTERPRET=1 before "
            "importing visionzip_kernels"
        )
    if device.type == "cuda" and interpreted:
        return "TRITON_INTERPRET=1 is set, so Triton cannot compile for the GPU"
    if device.type not in ("cpu", "cuda"):
        return f"it runs on cuda tensors (cpu under TRITON_INTERPRET=1), not {device.type}"
    return None


def on_cuda_extension(device: torch.device) -> str | None:
    """The CUDA C++ extension, where it was built."""
    if device.type != "cuda":
        return f"it runs on cuda tensors only, not {device.type}"
    if not _extension.CUDA_EXTENSION_BUILT:
        return (
            "the CUDA extension visionzip_kernels._C_cuda was not built (it is built when torch "
            "is a CUDA build and nvcc is found; VISIONZIP_BUILD_CUDA=1 insists on it)"
        )
    return None


@dataclass(frozen=True)
class Backend:
    """One implementation of an op: ``run`` takes the op's validated arguments."""

    name: str
    runs_on: RunsOn
    run: Callable


class OpBackends:
    """The backends of one op, in the order ``"auto"`` prefers them per device type.

    op: the public op's name (``visionzip::<op>``), which starts every error message.
    preference: device type -> backend names, fastest first; a backend not named there for a
    device type comes after the named ones, in the order it was added (the reference last).
    """

    def __init__(self, op: str, preference: dict[str, tuple[str, ...]]):
        self.op = op
        self.preference = preference
        self._backends: dict[str, Backend] = {}
        self._backend_ops: list[str] = []
        self._auto: dict[str, Backend] = {}

    @property
    def names(self) -> tuple[str, ...]:
        """Every accepted ``backend=`` value: ``"auto"`` and each backend's name."""
        return ("auto", *self._backends)

    def add(self, name: str, runs_on: RunsOn, run: Callable) -> None:
        """A backend that is a Python function."""
        self._backends[name] = Backend(name, runs_on, run)

    def add_op(self, name: str, runs_on: RunsOn, op_name: str) -> None:
        """A backend that is the op ``visionzip::<op_name>`` (schema in ``csrc/ops.cpp``)."""
        self._backend_ops.append(op_name)
        packet = getattr(torch.ops.visionzip, op_name)
        self.add(name, runs_on, packet.default)

    def add_python_kernel(self, name: str, runs_on: RunsOn, op_name: str, module: str, function: str) -> None:
        """A backend op whose kernel is ``module.function`` in Python (Triton launchers), imported
        on the first call so that ``import visionzip_kernels`` never imports ``triton``."""

        def kernel(*args, **kwargs):
            return getattr(importlib.import_module(module), function)(*args, **kwargs)

        torch.library.register_kernel(f"visionzip::{op_name}", ("cpu", "cuda"))(kernel)
        self.add_op(name, runs_on, op_name)

    def available(self, device) -> list[str]:
        """The backends that run on ``device`` (a ``torch.device`` or a string), fastest first."""
        device = torch.device(device)
        order = dict.fromkeys((*self.preference.get(device.type, ()), *self._backends))
        return [name for name in order if self._backends[name].runs_on(device) is None]

    def resolve(self, backend: str, device: torch.device) -> Backend:
        """The backend ``backend`` names (``"auto"``: the first available), or a ``ValueError``.

        The ``"auto"`` choice is made once per device type: what decides it (the packages, the
        ``TRITON_INTERPRET`` setting, the extensions built) is fixed once the package is imported.
        """
        if backend == "auto":
            chosen = self._auto.get(device.type)
            if chosen is None:
                chosen = self._auto[device.type] = self._backends[self.available(device)[0]]
            return chosen
        if not isinstance(backend, str) or backend not in self._backends:
            raise ValueError(f"{self.op}: `backend` must be one of {self.names}, got {backend!r}")
        chosen = self._backends[backend]
        reason = chosen.runs_on(device)
        if reason is not None:
            raise ValueError(f"{self.op}: backend={backend!r} is not available on {device}: {reason}")
        return chosen

    def register(self, fake: Callable, auto: Callable) -> None:
        """Register ``fake`` for the public op and every backend op, and ``auto`` as the public op's
        CPU and CUDA kernel."""
        for op_name in (self.op, *self._backend_ops):
            torch.library.register_fake(f"visionzip::{op_name}")(fake)
        torch.library.register_kernel(f"visionzip::{self.op}", ("cpu", "cuda"))(auto)
