"""PNG chart of ``generate`` TTFT: one panel per (model, batch), one bar per configuration and
budget, the fastest and slowest round as an error bar. Needs matplotlib; without it
``write_chart`` writes nothing (``prefill.chart.matplotlib_missing_note`` says so)."""
from __future__ import annotations

from pathlib import Path

from prefill.chart import plt
from prefill.rows import TINY, number

from .configs import CONFIGS
from .report import GenerateIndex
from .rows import TTFT

CONFIG_COLORS = dict(zip(CONFIGS, ("#8c8c8c", "#dd8452", "#4c72b0", "#55a868", "#c44e52")))


def write_chart(rows: list[dict[str, str]], path: Path) -> bool:
    """Writes the chart to ``path``; ``False`` (nothing written) where matplotlib is absent."""
    if plt is None:
        return False
    index = GenerateIndex(rows)
    panels = [(model, batch) for model in index.models() for batch in index.batches(model)]
    figure, axes = plt.subplots(len(panels), 1, figsize=(8, 3.2 * len(panels) + 1), squeeze=False,
                                layout="constrained")
    for axis, (model, batch) in zip(axes[:, 0], panels):
        _panel(axis, index, model, batch)
    title = "generate: time to first token (median of per-round medians; bars: fastest-slowest round)"
    if any(row["mode"] == TINY for row in rows):
        title += "\nTINY MODE: toy CPU models, not claims"
    figure.suptitle(title, fontsize=10)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return True


def _panel(axis, index: GenerateIndex, model: str, batch: int) -> None:
    labels, values, low, high, colors = [], [], [], [], []
    for config, budget in index.entries(model, batch):
        row = index.row(model, batch, config, budget, TTFT)
        if row is None or row["status"] != "ok":
            continue
        median = number(row["median_ms"])
        labels.append(f"{config} {budget or 'all'}")
        values.append(median)
        low.append(median - number(row["round_min_ms"]))
        high.append(number(row["round_max_ms"]) - median)
        colors.append(CONFIG_COLORS[config])
    positions = range(len(values))
    axis.barh(positions, values, xerr=[low, high], color=colors, capsize=3)
    axis.set_yticks(positions)
    axis.set_yticklabels(labels, fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("TTFT, ms")
    axis.set_title(f"{model}, batch {batch}", fontsize=10)
