"""What a benchmark row records about where it ran, and where rows are written."""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name with its core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        model = found.group(1).strip() if found else model
    return f"{model} ({torch.get_num_threads()} threads)"


def device_slug(device: torch.device) -> str:
    """A file-name-safe short name of the device: 'nvidia-h100-80gb-hbm3', 'cpu'."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent,
        )
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).resolve().parent).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment(device: torch.device) -> dict:
    """Device, library versions, commit and when it ran (UTC), for every row a benchmark writes."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda or "none",
        "commit": git_commit(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def model_run_environment(device: torch.device, mode: str, dtype: torch.dtype) -> dict:
    """``environment(device)`` with what every model benchmark adds: its mode (tiny or full-size),
    the transformers version and the dtype."""
    import transformers

    return {
        **environment(device), "mode": mode, "transformers": transformers.__version__,
        "dtype": str(dtype).removeprefix("torch."),
    }


def add_results_options(parser: argparse.ArgumentParser, what: str = "rows") -> None:
    """``--results-dir DIR`` or ``--publish`` (``benchmarks/results/``, the committed data), as
    ``args.results_dir``; with neither it is ``None`` and the benchmark writes nothing."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--results-dir", type=Path, default=None, metavar="DIR",
                       help=f"write the {what} under DIR (default: write nothing, print only)")
    where.add_argument("--publish", dest="results_dir", action="store_const", const=RESULTS_DIR,
                       help=f"write the {what} into benchmarks/results/, the committed data")


@contextlib.contextmanager
def results_folder(results_dir: Path | None):
    """``results_dir``, or a temporary folder removed on leaving (neither ``--results-dir`` nor
    ``--publish``): for benchmarks that merge rows with earlier runs and render them from files."""
    if results_dir is not None:
        yield results_dir
        return
    with tempfile.TemporaryDirectory(prefix="visionzip-bench-") as folder:
        yield Path(folder)


def save_rows(results_dir: Path | None, name: str, rows: list[dict]) -> Path | None:
    """``write_rows`` to ``results_dir / name`` and say so; with no ``results_dir`` (neither
    ``--results-dir`` nor ``--publish``) write nothing and say how to."""
    if results_dir is None:
        print(f"{len(rows)} rows not written (--results-dir DIR or --publish writes them)")
        return None
    path = write_rows(results_dir / name, rows)
    print(f"wrote {len(rows)} rows to {path}")
    return path


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` (dicts with the same keys) as CSV to ``path``, replacing an earlier run's file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_and_report(results_dir: Path | None, name: str, rows: list[dict], table: str,
                     verdicts: list[str] | None) -> None:
    """``save_rows`` (their fields in first-seen order, blanks where a row lacks one) to
    ``results_dir / name``, then print the table last, and the verdict lines (``None`` for a tiny
    run, which gives no verdict)."""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    save_rows(results_dir, name, [{field: row.get(field, "") for field in fields} for row in rows])
    print(table)
    if verdicts is None:
        print("tiny mode: toy sizes on a CPU, no verdict; the criteria need the full-size run on a GPU")
    else:
        print("\n".join(verdicts))
