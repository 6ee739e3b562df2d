"""The docs name only what exists: every repository path, every ``visionzip_kernels`` (``vz``) and
``torch.ops.visionzip`` name, every ``module.name`` of the package's modules (``encoder.x``) and
every ``make`` target that README.md and docs/*.md mention.

What is read: inline code spans, fenced code blocks and the targets of relative Markdown links.
A path is a token with a file extension, ending in ``/`` or starting at a top-level folder of the
repository; it exists when a file or folder of the repository ends with it (``ops/zip_tokens/op.py``
is ``visionzip_kernels/ops/zip_tokens/op.py``), with ``*`` as a wildcard and ``x.cu[h]`` standing for
``x.cu`` and ``x.cuh``. Placeholders (``<op>``), home folders and paths outside the repository are
not paths of the repository. A compiled module (``.so``) exists when setup.py builds it.
"""
from __future__ import annotations

import fnmatch
import importlib
import os
import re
from pathlib import Path

import pytest
import torch

import visionzip_kernels  # noqa: F401  (loads the ops' schemas into torch.ops.visionzip)

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FILE_EXTENSIONS = ("py", "md", "cpp", "cu", "cuh", "h", "txt", "csv", "png", "npz", "sh", "toml", "so", "cfg")
TOP_LEVEL = tuple(
    entry.name for entry in ROOT.iterdir() if entry.is_dir() and not entry.name.startswith(".")
) + (".ci",)
# Folders that hold no repository content: version control, environments, caches, build outputs.
NOT_CONTENT = re.compile(r"^(\.(?!ci$).*|__pycache__|.*\.egg-info|dist)$")
PATH_TOKEN = re.compile(r"^[\w.\-*\[\]]+(/[\w.\-*\[\]]*)*$")  # no placeholder: not <op>/
MAKE_TOKEN = re.compile(r"\bmake((?:\s+-\S+)*)\s+([a-z][\w-]*)")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def package_modules() -> dict[str, str]:
    """``{"encoder": "visionzip_kernels.integrations.encoder", ...}``: the package's modules whose
    file name is unique, the short names the docs use (``encoder.run_to_penultimate``)."""
    paths = sorted((ROOT / "visionzip_kernels").rglob("*.py"))
    stems = [path.stem for path in paths]
    return {
        path.stem: ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for path in paths
        if stems.count(path.stem) == 1 and not path.stem.startswith("_")
    }


MODULES = package_modules()
NAME_TOKEN = re.compile(r"(?<![\w.])(visionzip_kernels|vz|torch\.ops\.visionzip)((?:\.\w+)+)")
# A short module name alone in a code span (`encoder.run_to_penultimate`); in code, `handle.remove()`
# and `processor(...)` are variables.
SHORT_NAME = re.compile(rf"({'|'.join(MODULES)})((?:\.\w+)+)")


def inline_code(text: str) -> list[str]:
    """The inline code spans of Markdown ``text``."""
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    return re.findall(r"`([^`\n]+)`", prose)


def code_of(text: str) -> list[str]:
    """The fenced code blocks and the inline code spans of Markdown ``text``."""
    return re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M) + inline_code(text)


def relative_links(text: str) -> set[str]:
    """The targets of ``text``'s Markdown links that are not web addresses or anchors."""
    return {link for link in MARKDOWN_LINK.findall(text) if "://" not in link and not link.startswith("mailto:")}


def mentioned_paths(text: str) -> set[str]:
    """The repository paths ``text`` mentions in its code."""
    paths = set()
    for code in code_of(text):
        for token in re.split(r"[\s,;:()=\"'`{}]+", code):
            token = token.rstrip(".")
            if not PATH_TOKEN.match(token) or all(re.fullmatch(r"\.\w+", part) for part in token.split("/")):
                continue  # not a path, or a list of extensions such as .cu/.cuh
            has_extension = re.search(rf"\.({'|'.join(FILE_EXTENSIONS)})(\[\w+\])?$", token)
            if has_extension or token.endswith("/") or token.split("/")[0] in TOP_LEVEL and "/" in token:
                paths.add(token)
    return paths


def repository_entries() -> list[str]:
    """Every file and folder of the repository, relative to its root, folders ending in ``/``."""
    entries = []
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [name for name in subfolders if not NOT_CONTENT.match(name)]
        relative = Path(folder).relative_to(ROOT).as_posix()
        prefix = "" if relative == "." else relative + "/"
        entries += [prefix + name + "/" for name in subfolders] + [prefix + name for name in files]
    return entries


def built_modules() -> set[str]:
    """The compiled modules setup.py builds, as paths: ``visionzip_kernels/_C.so``, ..."""
    names = re.findall(r"Extension\(\s*\"([\w.]+)\"", (ROOT / "setup.py").read_text())
    return {name.replace(".", "/") + ".so" for name in names}


def path_exists(path: str, entries: list[str], modules: set[str]) -> bool:
    """Whether some repository entry ends with ``path`` (``*`` wildcards, ``x.cu[h]`` for both)."""
    if path.endswith(".so"):
        return any(module == path or module.endswith("/" + path) for module in modules)
    optional = re.fullmatch(r"(.*)\[(\w+)\]", path)
    if optional:
        return all(path_exists(each, entries, modules) for each in (optional[1], optional[1] + optional[2]))
    return any(fnmatch.fnmatchcase(entry, path) or fnmatch.fnmatchcase(entry, "*/" + path) for entry in entries)


def missing_paths(text: str, folder: Path) -> list[str]:
    """The paths ``text`` mentions that do not exist; its links are relative to ``folder``."""
    entries, modules = repository_entries(), built_modules()
    missing = [link for link in relative_links(text) if not (folder / link).exists()]
    for path in mentioned_paths(text):
        if path.startswith(("~", "/", "..")):
            continue  # outside the repository
        if not path_exists(path, entries, modules):
            missing.append(path)
    return sorted(missing)


def resolve_name(name: str) -> object:
    """The object ``name`` (``visionzip_kernels.a.b``, ``vz.a``, ``torch.ops.visionzip.a``) names;
    ``AttributeError``/``ImportError`` if there is none."""
    if name.startswith("torch.ops.visionzip."):
        return getattr(torch.ops.visionzip, name.removeprefix("torch.ops.visionzip."))
    head, _, rest = name.partition(".")
    parts = [*{"vz": "visionzip_kernels", **MODULES}.get(head, head).split("."), *rest.split(".")]
    for split in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError as error:
            if error.name is None or not ".".join(parts).startswith(error.name):
                raise
            continue
        for attribute in parts[split:]:
            found = getattr(found, attribute)
        return found
    raise ImportError(name)


def mentioned_names(text: str) -> set[str]:
    """The package's names ``text`` mentions: ``visionzip_kernels.a.b``, ``vz.a``,
    ``torch.ops.visionzip.a`` anywhere in its code, ``module.a`` as a code span of its own."""
    names = {span for span in inline_code(text) if SHORT_NAME.fullmatch(span)}
    names = {name for name in names if not name.endswith(tuple("." + ext for ext in FILE_EXTENSIONS))}
    for code in code_of(text):
        for match in NAME_TOKEN.finditer(code):
            if not code[match.end():].startswith("<"):  # vz.ops.<op>...: a placeholder
                names.add(match[1] + match[2])
    return names


def missing_names(text: str) -> list[str]:
    """The names ``text`` mentions that do not resolve."""
    missing = []
    for name in sorted(mentioned_names(text)):
        try:
            resolve_name(name)
        except (AttributeError, ImportError, RuntimeError):
            missing.append(name)
    return missing


def make_targets() -> set[str]:
    """The Makefile's targets (the names before a ``:`` that is not an assignment)."""
    makefile = (ROOT / "Makefile").read_text()
    targets = set()
    for line in re.findall(r"^([\w./ -]+):(?!=)", makefile, re.M):
        targets.update(line.split())
    return targets


def missing_make_targets(text: str) -> list[str]:
    """The ``make`` targets ``text``'s code runs that the Makefile does not have."""
    targets = make_targets()
    mentioned = {match[1] for code in code_of(text) for match in MAKE_TOKEN.findall(code)}
    return sorted(mentioned - targets)


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.relative_to(ROOT).as_posix())
def test_every_path_the_docs_mention_exists(doc):
    assert missing_paths(doc.read_text(), doc.parent) == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.relative_to(ROOT).as_posix())
def test_every_name_the_docs_mention_exists(doc):
    assert missing_names(doc.read_text()) == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.relative_to(ROOT).as_posix())
def test_every_make_target_the_docs_mention_exists(doc):
    assert missing_make_targets(doc.read_text()) == []


def test_the_checks_find_what_does_not_exist():
    text = (
        "See `csrc/zip_tokens_cpu.cpp`, `ops/zip_tokens/op.py`, `csrc/no_such_kernel.cu[h]`,\n"
        "`tests/test_docs.py`, [a link](docs/NO_SUCH.md), `ops/<op>/` and `llava-hf/llava-1.5-7b-hf`.\n"
        "`encoder.visionzip_features`, `budget.no_such_budget`, `budget.py`, `handle.remove()`.\n"
        "```\nvz.zip_tokens(h, a, 1, 0)\nvisionzip_kernels.ops.zip_tokens.no_such_name\n"
        "torch.ops.visionzip._zip_tokens_cpu\ntorch.ops.visionzip.no_such_op\nvz.ops.<op>.available_backends\n"
        "make -j2 cuda-check && make no-such-target\n```\n"
    )
    assert sorted(mentioned_paths(text)) == sorted(
        ["csrc/zip_tokens_cpu.cpp", "ops/zip_tokens/op.py", "csrc/no_such_kernel.cu[h]", "tests/test_docs.py", "budget.py"]
    )
    assert relative_links(text) == {"docs/NO_SUCH.md"}
    assert missing_paths(text, ROOT) == ["csrc/no_such_kernel.cu[h]", "docs/NO_SUCH.md"]
    assert missing_paths(text.replace("NO_SUCH", "CONTRACT"), ROOT / "docs") == [
        "csrc/no_such_kernel.cu[h]", "docs/CONTRACT.md"  # a link is relative to its document
    ]
    assert missing_names(text) == [
        "budget.no_such_budget", "torch.ops.visionzip.no_such_op",
        "visionzip_kernels.ops.zip_tokens.no_such_name",
    ]
    assert missing_make_targets(text) == ["no-such-target"]
