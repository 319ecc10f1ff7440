"""The package's shape: sub-packages along the data flow, one-way imports, short modules.

A scene flows read -> tile -> infer -> stitch -> write -> vectorize, and the package is cut along
that flow (docs/development.md, "Layout"). These tests read the source with :mod:`ast`, so every
import counts, including the ones deferred into functions and those under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "geoseg"

#: Layers from the bottom up: a module may import its own layer and the ones before it, never
#: one after it. Training sits above the public API because evaluation scores what users get
#: (it runs :func:`geoseg.segment`); only the CLI imports it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("geoseg.errors", "geoseg.types"),
    ("geoseg.config",),
    ("geoseg.model",),
    ("geoseg.io",),
    ("geoseg.engine",),
    ("geoseg.vector",),
    ("geoseg", "geoseg.pipeline", "geoseg.arrays", "geoseg.distributed", "geoseg.qgis_install"),
    ("geoseg.training",),
    ("geoseg.cli",),
)
SUB_PACKAGES = ("model", "io", "engine", "vector", "training", "cli")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "qgis_plugin" not in p.parts)


def _dotted(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    best, depth = -1, -1
    for index, names in enumerate(LAYERS):
        for name in names:
            matches = module == name or (name != "geoseg" and module.startswith(name + "."))
            if matches and len(name) > depth:
                best, depth = index, len(name)
    if best < 0:
        raise AssertionError(f"{module} is in no layer of tests/test_layout.py: add it")
    return best


def _imports(path: Path) -> set[str]:
    """The geoseg modules ``path`` imports (``from geoseg.x import y`` counts y if a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "geoseg")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "geoseg":
                continue
            found.add(node.module)
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                if (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).exists() or (
                    PACKAGE.parent / candidate.replace(".", "/")
                ).is_dir():
                    found.add(candidate)
    return found


def test_every_module_has_a_layer_and_the_sub_packages_exist() -> None:
    for sub in SUB_PACKAGES:
        assert (PACKAGE / sub / "__init__.py").exists(), sub
    for path in _modules():
        _layer(_dotted(path))


def test_imports_run_one_way_down_the_flow() -> None:
    upward = []
    for path in _modules():
        module = _dotted(path)
        here = _layer(module)
        for target in sorted(_imports(path)):
            if _layer(target) > here:
                upward.append(f"{module} imports {target}")
    assert not upward, "imports against the flow:\n" + "\n".join(upward)


def test_the_public_api_does_not_import_training() -> None:
    # `geoseg run` never pays for Lightning and torchgeo: only `geoseg train|evaluate` import them.
    for path in _modules():
        module = _dotted(path)
        if _layer(module) < _layer("geoseg.training"):
            assert not any(t.startswith("geoseg.training") for t in _imports(path)), module


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_fit_on_a_screen(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    lines = len(text.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.name} has {lines} lines: split it by idea"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines in {path.name}: {long}"


def test_warnings_go_through_geoseg_errors_warn() -> None:
    # geoseg.errors.warn keeps a run's warnings for run.json; a bare warnings.warn would not.
    bare = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}"
        for path in _modules()
        if path.name != "errors.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "warn"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "warnings"
    ]
    assert not bare, f"use geoseg.errors.warn: {bare}"


def test_the_layout_checker_catches_an_upward_import(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from geoseg.training.train import train\n")
    assert "geoseg.training.train" in _imports(source)
    assert _layer("geoseg.training.train") > _layer("geoseg.io.read")
