"""Markdown report of ``generate`` rows: the target ratios, the check of the timing, the tables.

Every number comes from a row; a ratio is shown only where both of its rows were measured.
Definitions (medians of per-round medians, ms):
- TTFT = ``generate(max_new_tokens=1)``, processor outputs on the device to the first token;
- generate-N = ``generate`` of exactly N tokens; decode ms/token = (generate-N - TTFT) / (N - 1);
- TTFT x full = full / this configuration; TTFT x published = published / this, same budget;
- the fastest recipe = the fastest ``vzk_*`` configuration at the smallest budget.
"""
from __future__ import annotations

from prefill.report import KeyedRows, environment_lines, format_ms, format_ratio
from prefill.rows import TINY, number

from .configs import CONFIGS, FULL, PACKAGE_CONFIGS, PUBLISHED, VZK_EAGER
from .rows import GENERATE, TTFT, TTFT_AGAIN

TINY_NOTE = (
    "**Tiny mode: toy models in float32 on a CPU, run to exercise the benchmark. "
    "These numbers are not claims about VisionZip, this package or any GPU.**"
)
TARGET_FASTEST = 5.5  # fastest recipe vs full tokens, LLaVA-NeXT-7B, one image, H100/H200 (issue 14)
TARGET_VS_PUBLISHED = 1.3  # vzk_eager vs published eager, every budget (issue 14)
TARGET_MODEL, TARGET_BATCH = "LLaVA-NeXT-7B", 1
HEADER = (
    "| config | budget | visual tokens | prompt tokens | TTFT | TTFT rounds | generate-{n} | "
    "decode ms/token | TTFT x full | TTFT x published | tokens vs vzk_eager | status |"
)


class GenerateIndex(KeyedRows):
    """Generate rows by (model, batch, config, budget, metric)."""

    KEY = ("model", "batch", "config", "budget", "metric")

    def row(self, model, batch, config, budget, metric) -> dict | None:
        return self.lookup(model, batch, config, budget, metric)

    def ms(self, model, batch, config, budget, metric=TTFT) -> float | None:
        return self.median_ms(model, batch, config, budget, metric)

    def budgets(self, model: str, batch: int) -> list[int]:
        return sorted({int(r["budget"]) for r in self.rows
                       if r["model"] == model and r["batch"] == str(batch) and r["budget"]})

    def entries(self, model: str, batch: int) -> list[tuple[str, str]]:
        """``(config, budget)`` pairs measured for (model, batch): full first, then by budget."""
        pairs = {(r["config"], r["budget"]) for r in self.rows if r["model"] == model and r["batch"] == str(batch)}
        return sorted(pairs, key=lambda pair: (int(pair[1] or 0), CONFIGS.index(pair[0])))


def fastest_recipe(index: GenerateIndex, model: str, batch: int) -> tuple[str, str, float] | None:
    """``(config, budget, TTFT)`` of the fastest ``vzk_*`` configuration at the smallest budget."""
    budgets = index.budgets(model, batch)
    if not budgets:
        return None
    timed = [(config, str(budgets[0]), index.ms(model, batch, config, budgets[0])) for config in PACKAGE_CONFIGS]
    timed = [entry for entry in timed if entry[2] is not None]
    return min(timed, key=lambda entry: entry[2]) if timed else None


def _verdict(ratio: float | None, target: float, applies: bool) -> str:
    if ratio is None:
        return "not measured"
    if not applies:
        return f"{ratio:.2f}x"
    return f"{ratio:.2f}x ({'meets' if ratio >= target else 'misses'} the {target}x target)"


def target_lines(index: GenerateIndex, claims: bool) -> list[str]:
    """The two target ratios of issue 14, for every (model, batch) measured."""
    lines = []
    for model in index.models():
        for batch in index.batches(model):
            full = index.ms(model, batch, FULL, "")
            fastest = fastest_recipe(index, model, batch)
            applies = claims and (model, batch) == (TARGET_MODEL, TARGET_BATCH)
            if fastest is not None:
                config, budget, ttft = fastest
                ratio = full / ttft if full else None
                lines.append(
                    f"- {model}, batch {batch}: fastest recipe ({config}, {budget} tokens) TTFT "
                    f"{format_ms(ttft)} ms vs full tokens (stock HF eager) {format_ms(full)} ms: "
                    f"{_verdict(ratio, TARGET_FASTEST, applies)}"
                )
            for budget in index.budgets(model, batch):
                published, eager = index.ms(model, batch, PUBLISHED, budget), index.ms(model, batch, VZK_EAGER, budget)
                ratio = published / eager if published and eager else None
                lines.append(
                    f"- {model}, batch {batch}, {budget} tokens: published eager {format_ms(published)} ms "
                    f"/ vzk_eager {format_ms(eager)} ms: {_verdict(ratio, TARGET_VS_PUBLISHED, claims)}"
                )
    return lines or ["- nothing measured"]


def repeat_lines(index: GenerateIndex) -> list[str]:
    """One configuration timed twice in the same rounds: how far apart the two medians are."""
    lines = []
    for row in index.rows:
        if row["metric"] != TTFT_AGAIN or row["status"] != "ok":
            continue
        key = (row["model"], row["batch"], row["config"], row["budget"])
        first, again = index.ms(*key, TTFT), number(row["median_ms"])
        if first is None:
            continue
        difference = abs(first - again) / min(first, again)
        lines.append(
            f"- {key[0]}, batch {key[1]}, {key[2]} at {key[3]} tokens: TTFT {format_ms(first)} ms and "
            f"{format_ms(again)} ms, {100 * difference:.1f}% apart"
        )
    return lines or ["- no configuration was timed twice"]


def model_table(index: GenerateIndex, model: str, batch: int, new_tokens: str) -> list[str]:
    header = HEADER.format(n=new_tokens)
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    full = index.ms(model, batch, FULL, "")
    for config, budget in index.entries(model, batch):
        ttft_row = index.row(model, batch, config, budget, TTFT)
        ttft, generated = index.ms(model, batch, config, budget), index.ms(model, batch, config, budget, GENERATE)
        published = index.ms(model, batch, PUBLISHED, budget) if config in PACKAGE_CONFIGS else None
        decode = (generated - ttft) / (int(new_tokens) - 1) if generated and ttft and int(new_tokens) > 1 else None
        rounds = "-"
        if ttft is not None:
            rounds = f"{format_ms(number(ttft_row['round_min_ms']))}-{format_ms(number(ttft_row['round_max_ms']))}"
        cells = [
            config, budget or "all", ttft_row["visual_tokens"] or "-", ttft_row["prompt_tokens"] or "-",
            format_ms(ttft), rounds, format_ms(generated), format_ms(decode),
            format_ratio(full, ttft) if config != FULL else "-", format_ratio(published, ttft),
            ttft_row["tokens_vs_vzk_eager"] or "-", ttft_row["status"],
        ]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return lines


def render(rows: list[dict[str, str]], data_file: str) -> str:
    """The whole markdown document; the tables come last."""
    index = GenerateIndex(rows)
    tiny = any(row["mode"] == TINY for row in rows)
    new_tokens = next((row["new_tokens"] for row in rows if row["metric"] == GENERATE and row["new_tokens"]), "N")
    lines = ["# `generate`: full tokens vs published VisionZip vs visionzip_kernels", ""]
    if tiny:
        lines += [TINY_NOTE, ""]
    lines += [f"Rows: `{data_file}`. Measured on:", *environment_lines(rows), ""]
    lines += [
        "Hugging Face `generate` on LLaVA models with random weights, processor outputs already on the "
        "device. Times in ms are the median of per-round medians: every configuration of a (model, "
        "batch) is timed in the same interleaved rounds (`TTFT rounds`: the fastest and slowest "
        f"round's median). TTFT = `generate(max_new_tokens=1)`; generate-{new_tokens} = exactly "
        f"{new_tokens} tokens; decode ms/token = (generate - TTFT) / {new_tokens} - 1. Budgets are "
        "visual tokens per image before LLaVA-NeXT's row newlines (`visual tokens`: what the language "
        "model sees). Configurations: full = stock HF, every visual token; published = the published "
        "VisionZip selection with eager attention and output_attentions; vzk_eager = "
        "`apply_visionzip`; vzk_graphs = with `cuda_graphs=True`; vzk_compile = with `cuda_graphs=True`, "
        "the language model compiled and the static cache (the README's fastest recipe).",
        "",
        f"## Targets (issue 14: >= {TARGET_FASTEST}x for the fastest recipe vs full tokens on "
        f"{TARGET_MODEL} at batch {TARGET_BATCH}; >= {TARGET_VS_PUBLISHED}x for vzk_eager vs published "
        "at every budget; on an H100/H200 in bf16)",
        *target_lines(index, claims=not tiny),
        "",
        "## The timing checked: one configuration timed twice in the same rounds",
        *repeat_lines(index),
        "",
    ]
    errors = [r for r in rows if r["status"] != "ok" and r["metric"] == TTFT]
    if errors:
        lines += ["## Not measured", *(f"- {r['model']} batch {r['batch']} {r['config']} {r['budget']}: "
                                       f"{r['status']}" for r in errors), ""]
    for model in index.models():
        first = next(r for r in rows if r["model"] == model)
        for batch in index.batches(model):
            crops = f"{first['crops']} crop" + ("" if first["crops"] == "1" else "s")
            lines += [f"## {model} ({first['encoder']} x {crops} + {first['lm']}), batch {batch}", ""]
            lines += [*model_table(index, model, batch, new_tokens), ""]
    return "\n".join(lines)
