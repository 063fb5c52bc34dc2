"""Static checks on the tutorials; nbval (in `make test`) executes them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_all_eight_tutorials_are_there():
    assert [p.name[:3] for p in NOTEBOOKS] == [f"{i:02d}_" for i in range(1, 9)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_opens_with_what_you_learn_need_and_how_long(path):
    first = _cells(path)[0]
    text = _source(first)
    assert first["cell_type"] == "markdown" and re.match(rf"# {path.name[:2]} · ", text), text[:80]
    for part in ("**What you will learn**", "**What it needs:**", "**How long:**"):
        assert part in text, f"{path.name}: the opening cell lacks {part}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_markdown_cells_are_not_commented_out(path):
    # A cell written as jupytext "# " comments renders every line as a heading in JupyterLab.
    for i, cell in enumerate(_cells(path)):
        lines = _source(cell).split("\n")
        if cell["cell_type"] == "markdown" and len(lines) > 1:
            assert not all(line == "#" or line.startswith("# ") for line in lines), f"{path.name} cell {i}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_executed_without_errors(path):
    code = [c for c in _cells(path) if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code), f"{path.name} is not committed executed"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name} was committed with an error output"
