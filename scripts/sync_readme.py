"""Copy the bad-input catalogue (docs/troubleshooting.md, "## Bad inputs") into README.md.

The README carries the same tables between two markers; tests/test_readme.py fails when they drift.
Run `python scripts/sync_readme.py` after editing docs/troubleshooting.md.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- troubleshooting:begin -->", "<!-- troubleshooting:end -->"


def catalogue() -> str:
    """The '## Bad inputs' section of docs/troubleshooting.md, headings demoted one level."""
    text = (ROOT / "docs" / "troubleshooting.md").read_text()
    start = text.index("## Bad inputs")
    end = text.index("\n## ", start + 1)
    body = text[start:end].strip().split("\n", 1)[1]  # drop the section's own heading
    return body.replace("\n### ", "\n#### ").strip()


def synced(readme: str) -> str:
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{catalogue()}\n{END}{tail}"


if __name__ == "__main__":
    path = ROOT / "README.md"
    path.write_text(synced(path.read_text()))
