"""VisionZip in Hugging Face transformers models (needs the ``transformers`` extra).

One call::

    from visionzip_kernels.integrations import apply_visionzip

    handle = apply_visionzip(model, processor, dominant=54, contextual=10)
    inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True)
    output_ids = model.generate(**inputs, max_new_tokens=64)
    handle.remove()  # the model and the processor are exactly as before

or ``with apply_visionzip(model, processor): ...``. Supported: ``LlavaForConditionalGeneration``
and ``LlavaNextForConditionalGeneration`` (and their inner ``LlavaModel`` / ``LlavaNextModel``)
with a CLIP or SigLIP vision tower, with their ``LlavaProcessor`` / ``LlavaNextProcessor``; and bare
``CLIPVisionModel`` / ``SiglipVisionModel``, whose ``forward`` then returns the zipped tokens.

The vision encoder keeps its attention implementation (SDPA by default) and stops after its
penultimate layer; only the methods that decide the visual features (and, in the processor, their
count) are replaced, on the given instances. Module by module:

- ``apply.py``: ``apply_visionzip``, the checks and the dispatch;
- ``budget.py``: the ``dominant``/``contextual`` budget and its checks;
- ``encoder.py``: the vision encoder run to its penultimate layer, with VisionZip;
- ``llava.py``, ``llava_next.py``, ``vision_model.py``: the replaced model methods;
- ``layout.py``: how many tokens an image becomes, in which order (LLaVA-NeXT's crops and newlines);
- ``processor.py``: the replaced processor methods;
- ``handle.py``: instance patches and ``VisionZipHandle``, which undoes them;
- ``outputs.py``: ``VisionZipOutput``, what the replaced methods return.
"""
try:
    import transformers  # noqa: F401
except ModuleNotFoundError as error:
    if error.name != "transformers":
        raise
    raise ImportError(
        "visionzip_kernels.integrations needs Hugging Face transformers, which is not installed: "
        "pip install visionzip_kernels[transformers]"
    ) from error

from .apply import apply_visionzip  # noqa: E402
from .handle import VisionZipHandle  # noqa: E402
from .outputs import VisionZipOutput  # noqa: E402

__all__ = ["VisionZipHandle", "VisionZipOutput", "apply_visionzip"]
