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
    # Lines left as jupytext "# " comments render as top-level headings in JupyterLab. The notebook's title
    # (the first line of its first cell) is the only level-1 heading; sections use "## ".
    for i, cell in enumerate(_cells(path)):
        if cell["cell_type"] != "markdown":
            continue
        for j, line in enumerate(_source(cell).split("\n")):
            if (i, j) != (0, 0):
                assert not (line == "#" or line.startswith("# ")), f"{path.name} cell {i} line {j}: {line[:60]!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_executed_without_errors(path):
    code = [c for c in _cells(path) if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code), f"{path.name} is not committed executed"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name} was committed with an error output"
