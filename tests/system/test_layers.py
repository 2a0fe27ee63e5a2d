"""The package's layers, checked from the source: command lines -> the MNIST application ->
the library -> the core. No module imports from a layer above its own, and `import lstmcore`
loads the library only (no MNIST application, no command line, no torch)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

PACKAGE = REPO / "python" / "lstmcore"

# the layers, lowest first; a module may import its own layer and those below
LAYERS = ("library", "mnist", "bench", "cli")
RANK = {name: k for k, name in enumerate(LAYERS)}
# `python -m lstmcore.train` and its kind: one-line entry points that run a command line
ENTRY_POINTS = {"train", "evaluate", "predict", "export", "serve", "__main__"}
# the one import upwards, by design: lstmcore.load (the trained classifier's loader, in the
# top namespace since 0.1) imports the application when it is called, never at import
ALLOWED = {("lstmcore", "lstmcore.mnist.model")}


def layer_of(module: str) -> str:
    """The layer of a dotted module name inside lstmcore."""
    parts = module.split(".")
    assert parts[0] == "lstmcore", module
    if len(parts) == 1:
        return "library"
    if parts[1] in ("mnist", "bench", "cli"):
        return parts[1]
    if parts[1] in ENTRY_POINTS:
        return "cli"
    return "library"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(path: Path) -> set[str]:
    """Every lstmcore module the file imports (absolute imports; the project uses no others)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "lstmcore"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "lstmcore":
                out.add(node.module)
                # `from lstmcore import mnist` imports the subpackage itself
                out |= {f"{node.module}.{a.name}" for a in node.names if node.module == "lstmcore"}
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}: relative import (the project imports absolutely)")
    return out


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "datasets" not in p.parts)


def test_the_layers_are_folders_in_the_tree() -> None:
    for folder in ("mnist", "cli", "bench"):
        assert (PACKAGE / folder / "__init__.py").is_file(), folder


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_from_a_layer_above_its_own(path: Path) -> None:
    mine = layer_of(module_name(path))
    for name in imported(path):
        if name.split(".")[1:2] in (["_core"], ["_cuda"]):
            continue  # the compiled core: below everything
        theirs = layer_of(name)
        if (module_name(path), name) in ALLOWED:
            continue
        assert RANK[theirs] <= RANK[mine], f"{module_name(path)} ({mine}) imports {name} ({theirs})"


@pytest.mark.subprocess
def test_import_lstmcore_loads_only_the_library() -> None:
    code = (
        "import sys, lstmcore\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('lstmcore.mnist', "
        "'lstmcore.cli', 'lstmcore.bench')) or m == 'torch' or m.startswith('torch.'))\n"
        "print(bad)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


@pytest.mark.subprocess
def test_lstmcore_load_is_there_without_importing_the_application_first(tmp_path: Path) -> None:
    """lstmcore.load (the MNIST classifier's loader) imports its layer only when called."""
    code = (
        "import sys, lstmcore\n"
        "try:\n"
        f"    lstmcore.load({str(tmp_path / 'missing.npz')!r})\n"
        "except ValueError as err:\n"
        "    print(type(err).__name__, 'lstmcore.mnist.model' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "CheckpointError True", done.stdout
