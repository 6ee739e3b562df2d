"""Pieces of the end-to-end prefill benchmark (``benchmarks/bench_prefill.py``).

``geometry`` (model shapes and budgets), ``models`` (random-weight builders), ``pipelines`` (the
three pipelines as stages), ``timing`` (device timer and interleaved rounds, shared with
``bench_generate.py``), ``measure`` (stages to rows), ``rows`` (the data file), ``report``
(markdown and ratios), ``chart`` (PNG), ``paper`` (the paper's numbers).
"""
