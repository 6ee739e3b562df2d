"""Pieces of the ``generate`` benchmark (``benchmarks/bench_generate.py``).

``models`` (the HF LLaVA models, processors and inputs, and twins that share their weights),
``configs`` (the five configurations compared), ``measure`` (interleaved timing to rows), ``rows``
(the data file), ``report`` (markdown and the target ratios), ``chart`` (PNG). Geometries and
budgets come from ``benchmarks/prefill/geometry.py``, timing from ``benchmarks/prefill/timing.py``.
"""
