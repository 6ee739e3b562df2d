"""What a benchmark row records about where it ran, and where rows are written."""
from __future__ import annotations

import csv
import datetime
import platform
import re
import subprocess
import sys
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
    """Device, library versions and commit, for every row a benchmark writes."""
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
    }


def model_run_environment(device: torch.device, mode: str, dtype: torch.dtype) -> dict:
    """``environment(device)`` with what every model benchmark adds: its mode (tiny or full-size),
    the transformers version, the dtype and when it ran (UTC)."""
    import transformers

    return {
        **environment(device), "mode": mode, "transformers": transformers.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` (dicts with the same keys) as CSV to ``path``, replacing an earlier run's file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_and_report(path: Path, rows: list[dict], table: str, verdicts: list[str], tiny: bool) -> None:
    """Write ``rows`` to ``path`` (their fields in first-seen order, blanks where a row lacks one),
    then print the table last, and the verdict lines unless this was a ``tiny`` run."""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    written = write_rows(path, [{field: row.get(field, "") for field in fields} for row in rows])
    print(f"wrote {written}", file=sys.stderr)
    print(table)
    if tiny:
        print("tiny mode: toy sizes on a CPU, no verdict; the criteria need the full-size run on a GPU")
    else:
        print("\n".join(verdicts))
