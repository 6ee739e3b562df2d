"""PNG chart of the time to first token, the claim a reader comes for: one panel per (model,
batch); for full tokens, then the published VisionZip and this package at each budget, the eager
TTFT and the CUDA-graph replay's side by side, medians with p20-p80 whiskers. A pipeline that no
graph can capture (the published code synchronises the host) is marked so. The stage breakdown is
in the markdown table. Needs matplotlib (``pip install matplotlib``); without it ``write_chart``
writes nothing and says so.
"""
from __future__ import annotations

from pathlib import Path

from .report import RowIndex, pipeline_results
from .rows import FULL, PACKAGE, PUBLISHED, TINY, TTFT, number

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    plt = None

PIPELINE_NAMES = {FULL: "full tokens", PUBLISHED: "published\nVisionZip", PACKAGE: "visionzip_kernels"}
TIMINGS = {"no": ("eager", "#4c72b0"), "yes": ("CUDA-graph replay", "#dd8452")}
BAR_WIDTH = 0.38


def matplotlib_missing_note() -> str:
    return "matplotlib is not installed: no PNG chart written (pip install matplotlib)."


def write_chart(rows: list[dict[str, str]], path: Path) -> bool:
    """Writes the chart to ``path``; ``False`` (nothing written) where matplotlib is absent."""
    if plt is None:
        return False
    index = RowIndex(rows)
    columns = max(len(index.batches(model)) for model in index.models())
    figure, axes = plt.subplots(
        len(index.models()), columns, figsize=(7.5 * columns, 4.2 * len(index.models()) + 1),
        squeeze=False, layout="constrained",
    )
    for axis in axes.flat:
        axis.set_visible(False)
    for row_number, model in enumerate(index.models()):
        for column, batch in enumerate(index.batches(model)):
            _panel(axes[row_number][column], index, model, batch)
    handles = [plt.Rectangle((0, 0), 1, 1, color=color) for _, color in TIMINGS.values()]
    figure.legend(handles, [name for name, _ in TIMINGS.values()], loc="outside lower center", ncol=2)
    first = rows[0]
    title = (f"Time to first token (pixels to the first token), {first['device']}, {first['dtype']}, "
             f"commit {first['commit']}: median, whiskers p20-p80")
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
        _, _, pipeline, budget = result.key
        for offset, (graph, (_, color)) in zip((-BAR_WIDTH / 2, BAR_WIDTH / 2), TIMINGS.items()):
            row = index.row(model, batch, pipeline, budget, TTFT, graph)
            x = position + offset
            if row is None or row["status"] != "ok":
                reason = "no graph:\nhost sync" if row is not None and "capturable" in row["status"] else "not\ntimed"
                axis.text(x, 0, reason, ha="center", va="bottom", fontsize=6, rotation=90, color="grey")
                continue
            median, p20, p80 = (number(row[field]) for field in ("median_ms", "p20_ms", "p80_ms"))
            axis.bar(x, median, width=BAR_WIDTH, color=color, yerr=[[median - p20], [p80 - median]], capsize=2)
            axis.text(x, p80, f"{median:.3g}", ha="center", va="bottom", fontsize=6)
    axis.set_xticks(range(len(results)))
    axis.set_xticklabels(
        [f"{PIPELINE_NAMES[r.key[2]]}\n{r.visual_tokens or r.key[3]} tokens" for r in results], fontsize=7
    )
    axis.set_xlabel("pipeline, visual tokens per prompt")
    axis.set_ylabel("time to first token, ms")
    axis.set_title(f"{model}, batch {batch}", fontsize=10)
    axis.set_visible(True)
