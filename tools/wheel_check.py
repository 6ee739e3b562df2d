"""The wheel round trip that CI runs (`make wheel-check`): build, inspect, install alone, run elsewhere.

1. Builds the wheel with `python -m build --wheel --no-isolation` (against this environment's torch)
   into .build/wheel-check/dist.
2. Inspects it: every module of the source package is in it, its compiled extensions carry no
   symbol table or debug sections, its metadata names torch, numpy and the extras.
3. Creates a fresh venv (.build/wheel-check/venv, without pip, so without a setuptools of its own)
   that sees nothing of this environment but the installed distributions the wheel depends on
   (torch and numpy, with their own dependencies, linked into one folder that a .pth file puts on
   the venv's path), and installs the wheel into it with this environment's pip,
   `pip --python <venv> install --no-index`: nothing comes from an index, and a dependency that is
   not satisfied fails the install by name.
4. From a temporary folder outside the repository, checks that `visionzip_kernels` is imported from
   the venv, that `import visionzip_kernels.integrations` names the extra it needs, and runs the
   main job, `python -m visionzip_kernels --batch 1`.

Exits non-zero, naming the step, at the first failure.
"""
from __future__ import annotations

import importlib.metadata
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".build" / "wheel-check"
PACKAGE = "visionzip_kernels"
EXTRAS = {"triton", "transformers", "test"}


def run(*command, cwd=ROOT) -> str:
    print("+", " ".join(map(str, command)), flush=True)
    result = subprocess.run(command, cwd=cwd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    print(result.stdout, end="", flush=True)
    if result.returncode != 0:
        sys.exit(f"wheel-check: `{' '.join(map(str, command))}` failed with exit code {result.returncode}")
    return result.stdout


def build_wheel() -> Path:
    shutil.rmtree(WORK, ignore_errors=True)
    run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", WORK / "dist")
    (wheel,) = (WORK / "dist").glob(f"{PACKAGE}-*.whl")
    return wheel


def wheel_requirements(wheel: Path) -> tuple[list[str], set[str]]:
    """The names of the wheel's run-time requirements (extras aside), and its extras."""
    with zipfile.ZipFile(wheel) as archive:
        (metadata_name,) = (name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        metadata = archive.read(metadata_name).decode()
    requires = re.findall(r"^Requires-Dist: ([A-Za-z0-9_.-]+)(.*)$", metadata, re.MULTILINE)
    extras = set(re.findall(r"^Provides-Extra: (\S+)$", metadata, re.MULTILINE))
    return [name for name, rest in requires if "extra ==" not in rest], extras


def elf_section_names(data: bytes) -> list[str]:
    """The section names of a 64-bit little-endian ELF file."""
    section_offset, = struct.unpack_from("<Q", data, 0x28)
    entry_size, count, names_index = struct.unpack_from("<HHH", data, 0x3A)

    def section(index):  # (name offset, file offset, size)
        base = section_offset + index * entry_size
        return struct.unpack_from("<I", data, base)[0], *struct.unpack_from("<QQ", data, base + 0x18)

    _, names_at, names_size = section(names_index)
    names = data[names_at:names_at + names_size]
    return [names[name:names.index(b"\0", name)].decode() for name, _, _ in map(section, range(count))]


def check_wheel(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        members = set(archive.namelist())
        sources = {path.relative_to(ROOT).as_posix() for path in (ROOT / PACKAGE).rglob("*.py")}
        missing = sorted(sources - members)
        if missing:
            sys.exit(f"wheel-check: the wheel lacks {missing}")
        extensions = sorted(name for name in members if name.endswith(".so"))
        if f"{PACKAGE}/_C.so" not in extensions:
            sys.exit(f"wheel-check: the wheel holds no {PACKAGE}/_C.so (extensions: {extensions})")
        for name in extensions:
            sections = elf_section_names(archive.read(name))
            unstripped = [s for s in sections if s == ".symtab" or s.startswith(".debug")]
            if unstripped:
                sys.exit(f"wheel-check: {name} is not stripped (sections {unstripped})")
            print(f"{name}: {archive.getinfo(name).file_size / 1e6:.2f} MB, stripped")
    runtime, extras = wheel_requirements(wheel)
    if not {"torch", "numpy"} <= set(runtime) or not EXTRAS <= extras:
        sys.exit(f"wheel-check: the metadata requires {sorted(runtime)} with extras {sorted(extras)}")


def requirement_closure(wheel: Path) -> list[importlib.metadata.Distribution]:
    """The installed distributions the wheel needs at run time: its requirements (extras aside) and
    theirs, as far as they are installed here."""
    pending = wheel_requirements(wheel)[0]
    found: dict[str, importlib.metadata.Distribution] = {}
    while pending:
        name = pending.pop().lower().replace("_", "-")
        if name in found:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # an optional requirement of a dependency; the install below names any missing one
        found[name] = dist
        for requirement in dist.requires or ():
            if "extra ==" not in requirement:
                pending.append(re.match(r"[A-Za-z0-9_.-]+", requirement).group())
    return list(found.values())


def make_venv(wheel: Path) -> Path:
    venv = WORK / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)  # no pip, so no setuptools of its own either
    python = venv / "bin" / "python"
    site_packages = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    reused = WORK / "reused"
    reused.mkdir()
    for dist in requirement_closure(wheel):
        location = Path(dist.locate_file(""))
        for top in {Path(file).parts[0] for file in dist.files or () if not str(file).startswith("..")}:
            if top != "__pycache__" and not (reused / top).exists():
                (reused / top).symlink_to(location / top)
    (site_packages / "_wheel_check_reused.pth").write_text(f"{reused}\n")
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-index", "--no-cache-dir", wheel)
    return python


def run_from_elsewhere(python: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="visionzip-wheel-check-") as elsewhere:
        location = run(python, "-c", f"import {PACKAGE}; print({PACKAGE}.__file__)", cwd=elsewhere).strip()
        if not Path(location).is_relative_to(python.parents[1]):
            sys.exit(f"wheel-check: {PACKAGE} was imported from {location}, not from the venv")
        extra_hint = subprocess.run(
            [python, "-c", f"import {PACKAGE}.integrations"], cwd=elsewhere, capture_output=True, text=True
        )
        if f"pip install {PACKAGE}[transformers]" not in extra_hint.stderr:
            sys.exit(f"wheel-check: importing the integrations without transformers said {extra_hint.stderr!r}")
        run(python, "-m", PACKAGE, "--batch", "1", cwd=elsewhere)


def main() -> None:
    wheel = build_wheel()
    check_wheel(wheel)
    python = make_venv(wheel)
    run_from_elsewhere(python)
    print(f"wheel-check: {wheel.name} builds, installs alone into a fresh venv and runs outside the repository")


if __name__ == "__main__":
    main()
