"""PNG chart of the stage breakdown: one panel per (model, batch), stacked eager stage medians per
pipeline and budget, the measured TTFT as a marker. Needs matplotlib (``pip install matplotlib``);
without it ``write_chart`` writes nothing and says so.
"""
from __future__ import annotations

from pathlib import Path

from .report import RowIndex, pipeline_results
from .rows import FULL, PACKAGE, PUBLISHED, STAGES, TINY

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    plt = None

SHORT_NAMES = {FULL: "full", PUBLISHED: "pub", PACKAGE: "vzk"}
STAGE_COLORS = {"encoder": "#4c72b0", "zip": "#dd8452", "projector": "#55a868", "lm_prefill": "#c44e52"}


def matplotlib_missing_note() -> str:
    return "matplotlib is not installed: no PNG chart written (pip install matplotlib)."


def write_chart(rows: list[dict[str, str]], path: Path) -> bool:
    """Writes the chart to ``path``; ``False`` (nothing written) where matplotlib is absent."""
    if plt is None:
        return False
    index = RowIndex(rows)
    columns = max(len(index.batches(model)) for model in index.models())
    figure, axes = plt.subplots(
        len(index.models()), columns, figsize=(6.5 * columns, 3.6 * len(index.models()) + 1),
        squeeze=False, layout="constrained",
    )
    for axis in axes.flat:
        axis.set_visible(False)
    for row_number, model in enumerate(index.models()):
        for column, batch in enumerate(index.batches(model)):
            _panel(axes[row_number][column], index, model, batch)
    handles = [plt.Rectangle((0, 0), 1, 1, color=STAGE_COLORS[stage]) for stage in STAGES]
    marker = plt.Line2D([], [], color="black", marker="_", linestyle="", markersize=14)
    figure.legend([*handles, marker], [*STAGES, "TTFT (timed together)"], loc="outside lower center", ncol=5)
    title = "Prefill stage breakdown (eager medians); vzk = visionzip_kernels, pub = published VisionZip"
    if any(row["mode"] == TINY for row in rows):
        title += "\nTINY MODE: toy CPU geometries, not claims"
    figure.suptitle(title, fontsize=11)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return True


def _panel(axis, index: RowIndex, model: str, batch: int) -> None:
    results = pipeline_results(index, model, batch)
    for position, result in enumerate(results):
        bottom = 0.0
        for stage in STAGES:
            value = result.stages[stage] or 0.0
            axis.bar(position, value, bottom=bottom, color=STAGE_COLORS[stage], width=0.7)
            bottom += value
        if result.ttft is not None:
            axis.plot(position, result.ttft, marker="_", color="black", markersize=14)
    axis.set_xticks(range(len(results)))
    axis.set_xticklabels([f"{SHORT_NAMES[r.key[2]]}\n{r.key[3]}" for r in results], fontsize=8)
    axis.set_ylabel("ms")
    axis.set_title(f"{model}, batch {batch}", fontsize=10)
    axis.set_visible(True)
