"""CUDA graphs of a LLaVA model's vision path: pixels -> projected image features, replayed.

With ``apply_visionzip(..., cuda_graphs=True)`` the replaced ``get_image_features`` runs its vision
path (``llava.project_zipped``: the encoder to its penultimate layer, ``attention_importance``,
``zip_tokens``, the projector) through a ``VisionGraphs``. On the first call with a new input
signature it captures that path in a CUDA graph, with a static input buffer and static output
buffers; later calls with the same signature copy the pixels into the input buffer and replay it.
Eagerly the path launches a few hundred kernels from Python; a replay launches them all at once.

A signature is what a captured graph is valid for: the pixels' shape, dtype and device, whether
inference mode is on, and which weights (the model object and the address of its first parameter:
moving the model with ``.to`` gives a new signature). The graphs of at most ``cache_size``
signatures are kept, the least recently used evicted first; each holds its own memory pool.

Results are exactly the eager path's (the same kernels on the same inputs), and they are the
caller's: each replay's outputs are cloned out of the static buffers, which the next replay
overwrites, so features handed to the language model stay as they were.

Where no graph can serve a call it runs eagerly: autograd enabled (a replay records no gradients),
pixels not on a CUDA device, or a failed capture (that signature is remembered and never retried).
Each reason is given in one warning, once per ``VisionGraphs`` (a failed capture's reason names
the signature). Under an enclosing CUDA graph capture the path runs eagerly, to be captured by it;
under ``torch.compile`` the graph cache is not traced (``torch.compiler.disable``).
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch

from ..checks import check_bool, check_int

WARMUP_CALLS = 2  # eager runs before capture: lazy initialisation, Triton compilation, cuBLAS handles

VisionPath = Callable[[object, torch.Tensor], tuple]
"""``path(model, pixel_values) -> tuple of tensors``, the computation a graph captures."""


class GraphUnavailable(RuntimeError):
    """No CUDA graph can run this call; the message says why (it goes into the warning)."""


@dataclass(frozen=True)
class Signature:
    """What a captured graph is valid for (see the module docstring)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    inference_mode: bool
    model_id: int
    weights_address: int


def describe(pixel_values: torch.Tensor) -> str:
    """``pixel_values [5, 3, 336, 336] bfloat16 on cuda:0``, for warnings."""
    dtype = str(pixel_values.dtype).removeprefix("torch.")
    return f"pixel_values {list(pixel_values.shape)} {dtype} on {pixel_values.device}"


@dataclass(frozen=True)
class StaticGraph:
    """A captured computation: ``replay()`` reads ``static_input`` and rewrites ``static_outputs``."""

    static_input: torch.Tensor
    static_outputs: tuple[torch.Tensor, ...]
    replay: Callable[[], None]


def capture_cuda_graph(path: Callable[[torch.Tensor], tuple], pixel_values: torch.Tensor) -> StaticGraph:
    """Capture ``path`` on a copy of ``pixel_values`` in a ``torch.cuda.CUDAGraph``.

    ``WARMUP_CALLS`` eager runs on a side stream come first (an error there is the eager path's own
    error and propagates). Raises ``GraphUnavailable`` for pixels that are not on a CUDA device and
    for any failure during capture (an operation that synchronises the host, out of memory, ...).
    """
    if pixel_values.device.type != "cuda":
        raise GraphUnavailable(
            f"pixel_values are on {pixel_values.device.type}, and CUDA graphs capture CUDA work only"
        )
    device = pixel_values.device
    with torch.cuda.device(device):
        static_input = pixel_values.clone()
        side_stream = torch.cuda.Stream(device)
        side_stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side_stream):
            for _ in range(WARMUP_CALLS):
                path(static_input)
        torch.cuda.current_stream(device).wait_stream(side_stream)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                static_outputs = tuple(path(static_input))
        except Exception as error:  # whatever stops the capture, the call can still run eagerly
            reason = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            raise GraphUnavailable(f"the capture of {describe(pixel_values)} failed ({reason})") from error
    return StaticGraph(static_input, static_outputs, graph.replay)


class VisionGraphs:
    """``path(model, pixel_values)`` through a bounded LRU cache of captured graphs.

    path: the eager vision path, returning a tuple of tensors. cache_size: graphs kept (>= 1).
    capture: ``capture(path_of_pixels, pixel_values) -> StaticGraph`` or ``GraphUnavailable``
    (default ``capture_cuda_graph``; another capture lets the cache be exercised without a GPU).
    """

    def __init__(self, path: VisionPath, cache_size: int, capture=None):
        self.path = path
        self.cache_size = cache_size
        self._capture = capture or capture_cuda_graph
        self._graphs: OrderedDict[Signature, StaticGraph] = OrderedDict()
        self._uncapturable: set[Signature] = set()
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self._graphs)

    @property
    def signatures(self) -> list[Signature]:
        """The signatures with a graph, least recently used first."""
        return list(self._graphs)

    def clear(self) -> None:
        """Drop every graph (their memory pools are freed with them) and what was remembered."""
        self._graphs.clear()
        self._uncapturable.clear()
        self._warned.clear()

    @torch.compiler.disable
    def __call__(self, model, pixel_values: torch.Tensor) -> tuple:
        if torch.is_grad_enabled():
            return self._eager(
                model, pixel_values, "autograd is enabled and a graph replay records no gradients; "
                "call the model under torch.no_grad() or torch.inference_mode() (generate does)"
            )
        if pixel_values.is_cuda and torch.cuda.is_current_stream_capturing():
            return self.path(model, pixel_values)  # an enclosing capture records the eager path
        signature = self._signature(model, pixel_values)
        graph = self._graphs.get(signature)
        if graph is None:
            if signature in self._uncapturable:
                return self.path(model, pixel_values)
            try:
                graph = self._capture(lambda pixels: self.path(model, pixels), pixel_values)
            except GraphUnavailable as error:
                self._uncapturable.add(signature)
                return self._eager(model, pixel_values, str(error))
            self._graphs[signature] = graph
            while len(self._graphs) > self.cache_size:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(signature)
        graph.static_input.copy_(pixel_values)
        graph.replay()
        return tuple(output.clone() for output in graph.static_outputs)

    def _signature(self, model, pixel_values: torch.Tensor) -> Signature:
        first_weight = next(model.parameters())
        return Signature(
            tuple(pixel_values.shape), pixel_values.dtype, pixel_values.device,
            torch.is_inference_mode_enabled(), id(model), first_weight.data_ptr(),
        )

    def _eager(self, model, pixel_values: torch.Tensor, reason: str) -> tuple:
        if reason not in self._warned:
            self._warned.add(reason)
            warnings.warn(
                f"apply_visionzip(cuda_graphs=True): the vision path runs eagerly: {reason}",
                RuntimeWarning, stacklevel=2,
            )
        return self.path(model, pixel_values)


@dataclass(frozen=True)
class GraphRelease:
    """The entry of a handle's patch list that frees ``graphs`` when the handle is removed."""

    graphs: VisionGraphs

    def restore(self) -> None:
        self.graphs.clear()


def checked_graph_cache_size(cuda_graphs, cache_size) -> int | None:
    """``apply_visionzip``'s ``cuda_graphs`` and ``graph_cache_size``, checked: the number of graphs
    to keep, or ``None`` without CUDA graphs. ``TypeError`` for a non-bool ``cuda_graphs`` or a
    non-int size, ``ValueError`` for a size below 1, whether or not ``cuda_graphs`` is on."""
    graphs = check_bool(cuda_graphs, "cuda_graphs", "apply_visionzip")
    size = check_int(cache_size, "graph_cache_size", "apply_visionzip")
    if size < 1:
        raise ValueError(
            f"apply_visionzip: `graph_cache_size` must be >= 1 (the CUDA graphs kept with "
            f"cuda_graphs=True), got {size}; leave it at its default, 8"
        )
    return size if graphs else None
