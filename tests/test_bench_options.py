"""Every benchmark script's options: each has help, and rows are written only where asked
(``--results-dir DIR`` or ``--publish``); a run with neither leaves ``benchmarks/results/`` as it was."""
from __future__ import annotations

import argparse
import hashlib
import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import run_environment  # noqa: E402

SCRIPTS = sorted(path.stem for path in BENCHMARKS.glob("*.py") if path.stem.startswith("bench_"))


class ParserCaught(Exception):
    """Raised in place of parsing: carries the script's parser."""

    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__()
        self.parser = parser


def parser_of(script: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser ``script``'s ``main`` builds, caught when it parses (nothing runs)."""
    module = importlib.import_module(script)

    def catch(parser, *args, **kwargs):
        raise ParserCaught(parser)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    with pytest.raises(ParserCaught) as caught:
        module.main([])
    return caught.value.parser


def test_every_benchmark_script_is_checked():
    assert len(SCRIPTS) >= 11 and "bench_zip_tokens" in SCRIPTS


def options_without_help(parser: argparse.ArgumentParser) -> list[list[str]]:
    options = [action for action in parser._actions if not isinstance(action, argparse._HelpAction)]
    return [action.option_strings for action in options if not action.help]


def test_the_results_section_script_has_help_on_every_option(monkeypatch):
    assert options_without_help(parser_of("results_readme", monkeypatch)) == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_option_has_help_and_rows_go_only_where_asked(script, monkeypatch):
    parser = parser_of(script, monkeypatch)
    monkeypatch.undo()
    assert options_without_help(parser) == []
    assert parser.parse_args([]).results_dir is None
    assert parser.parse_args(["--publish"]).results_dir == run_environment.RESULTS_DIR
    assert parser.parse_args(["--results-dir", "elsewhere"]).results_dir == Path("elsewhere")
    with pytest.raises(SystemExit):
        parser.parse_args(["--publish", "--results-dir", "elsewhere"])


def results_snapshot() -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted((BENCHMARKS / "results").iterdir())
    }


def test_a_run_without_results_options_writes_nothing(capsys, tmp_path):
    import bench_onevision_pooling  # counts only: seconds on a CPU

    before = results_snapshot()
    assert bench_onevision_pooling.main([]) == 0
    assert results_snapshot() == before
    assert "not written (--results-dir DIR or --publish writes them)" in capsys.readouterr().out
    assert bench_onevision_pooling.main(["--results-dir", str(tmp_path)]) == 0
    assert [path.name for path in tmp_path.iterdir()] == ["onevision_pooling.csv"]
