"""The documentation: README.md stays short, docs/ builds strict, and every page is reachable."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"
SCORES_MARKER = "<!-- scores table"


def _nav_pages(nav: list[object]) -> list[str]:
    """Flatten mkdocs' nav (strings, {title: page} and {title: [sections]}) into page paths."""
    pages: list[str] = []
    for entry in nav:
        if isinstance(entry, str):
            pages.append(entry)
        elif isinstance(entry, dict):
            for value in entry.values():
                pages.extend(_nav_pages(value) if isinstance(value, list) else [value])
    return pages


def _table_after_marker(text: str) -> list[str]:
    """The Markdown table that directly follows the scores marker comment."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(SCORES_MARKER)) + 1
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append(line)
    return table


def test_readme_is_under_300_lines() -> None:
    assert len(README.read_text().splitlines()) < 300


def test_every_docs_page_is_in_the_nav() -> None:
    config = yaml.safe_load(MKDOCS_YML.read_text())
    assert config["docs_dir"] == "docs"
    nav = _nav_pages(config["nav"])
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(nav) == pages
    assert nav[0] == "index.md"


def test_readme_links_every_page_and_each_link_resolves() -> None:
    readme = README.read_text()
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#[^)\s]*)?\)", readme)
    for link in links:
        assert (ROOT / link).is_file(), f"README.md links {link}, which does not exist"
    pages = {f"docs/{p.relative_to(DOCS).as_posix()}" for p in DOCS.rglob("*.md")}
    assert pages <= set(links), f"pages README.md does not link: {sorted(pages - set(links))}"


def test_readme_scores_table_equals_the_model_page() -> None:
    readme_table = _table_after_marker(README.read_text())
    model_table = _table_after_marker((DOCS / "model.md").read_text())
    assert len(readme_table) > 2
    assert readme_table == model_table, "update the scores in README.md and docs/model.md together"


def test_mkdocs_builds_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet"]
        + ["--config-file", str(MKDOCS_YML), "--site-dir", str(site)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's notice about MkDocs 2.0
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (site / "index.html").is_file()
    assert "material" in (site / "index.html").read_text(encoding="utf-8")  # the Material theme
    assert (site / "images" / "qgis_result.png").is_file()
