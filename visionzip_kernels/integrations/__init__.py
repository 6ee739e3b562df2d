"""VisionZip in Hugging Face transformers models (needs the ``transformers`` extra).

One call::

    from visionzip_kernels.integrations import apply_visionzip

    handle = apply_visionzip(model, processor, dominant=54, contextual=10)
    inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True)
    output_ids = model.generate(**inputs, max_new_tokens=64)
    handle.remove()  # the model and the processor are exactly as before

or ``with apply_visionzip(model, processor): ...``. Supported: ``LlavaForConditionalGeneration``,
``LlavaNextForConditionalGeneration`` and ``LlavaOnevisionForConditionalGeneration`` (images and
videos; and their inner ``LlavaModel`` / ``LlavaNextModel`` / ``LlavaOnevisionModel``) with a CLIP
or SigLIP vision tower, with their ``LlavaProcessor`` / ``LlavaNextProcessor`` /
``LlavaOnevisionProcessor``; ``Qwen2_5_VLForConditionalGeneration``,
``Qwen3VLForConditionalGeneration`` and Qwen3.5's ``Qwen3_5ForConditionalGeneration`` /
``Qwen3_5MoeForConditionalGeneration`` (and their inner models) with their processors, every image
zipped on its own; ``InternVLForConditionalGeneration`` (and ``InternVLModel``) with its
``InternVLProcessor``, every tile zipped on its own; ``Gemma3ForConditionalGeneration`` and
``Gemma4ForConditionalGeneration`` (and their inner models) with their processors, each image's
soft tokens zipped; and bare ``CLIPVisionModel`` / ``SiglipVisionModel``, whose ``forward`` then
returns the zipped tokens.

The vision encoder keeps its attention implementation (SDPA by default) and stops after the layer
the model reads (the penultimate one in LLaVA, the last one in LLaVA-OneVision); only the methods that decide the visual features (and, in the processor, their
count) are replaced, on the given instances. Module by module:

- ``apply.py``: ``apply_visionzip``, the checks and the dispatch;
- ``budget.py``: the ``dominant``/``contextual`` budget and its checks;
- ``encoder.py``: the vision encoder run to the layer the model reads, with VisionZip;
- ``llava.py``, ``llava_next.py``: the replaced LLaVA methods (and LLaVA-NeXT's token layout);
- ``llava_onevision.py``: the replaced LLaVA-OneVision methods, images per crop and videos per
  frame, and their token counts;
- ``graphs.py``: ``cuda_graphs=True``, the vision path as CUDA-graph replays (a bounded LRU cache);
- ``vision_model.py``: the replaced ``forward`` of a bare vision model, and ``VisionZipOutput``,
  what every replaced method returns;
- ``processor.py``: the replaced processor methods;
- ``qwen_vl.py`` (the encoder: last block's queries and keys, per-image zip),
  ``qwen_vl_positions.py`` (M-RoPE positions of kept tokens), ``qwen_vl_processor.py``,
  ``qwen_vl_model.py`` (the replaced methods), ``qwen2_5_vl.py``, ``qwen3_vl.py`` and
  ``qwen3_5.py`` (what is particular to each family): Qwen-VL;
- ``internvl.py`` (the feature layer's CLS row, per-tile zip after the pixel shuffle),
  ``internvl_model.py`` (the replaced method, the per-tile budget), ``internvl_processor.py``:
  InternVL;
- ``gemma3.py``, ``gemma3_processor.py``, ``gemma4.py``, ``gemma4_processor.py``: Gemma 3 and
  Gemma 4 (the replaced ``get_image_features`` and processor methods), ``capture.py`` (the hooks
  that read the last encoder layer's queries and keys);
- ``handle.py``: instance patches and ``VisionZipHandle``, which undoes them.
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

__all__ = ["VisionZipHandle", "VisionZipOutput", "apply_visionzip"]
_HOMES = {"VisionZipHandle": "handle", "VisionZipOutput": "vision_model", "apply_visionzip": "apply"}


def __getattr__(name: str):
    """The public names, imported on first use: a module of this package (``budget``, read by the
    vLLM plugin under vLLM's older transformers) imports without every model family's classes."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
