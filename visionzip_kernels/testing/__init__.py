"""Helpers for checking and timing the ops, used by ``python -m visionzip_kernels``, the tests and
the benchmarks: ``parity`` (a backend's output against the reference, under the package's
tolerances), ``timing`` (medians and quantiles of repeated calls, CPU or CUDA), ``published``
(the published VisionZip selection, the baseline), ``onevision`` (tiny random LLaVA-OneVision
models and processors, for the integration's tests and the benchmarks' CPU mode; needs
``transformers``), ``tiny_text`` (the word-level tokenizer and small decoder config that every
tiny model shares; needs ``transformers``)."""
