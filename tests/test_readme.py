"""The README's promises: two quick-start commands, CI runs the test one, a short front door that links the docs
instead of copying them."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_quick_start_has_exactly_two_commands_and_ci_runs_the_test_one():
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", README, re.S).group(1)
    commands = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_readme_links_the_troubleshooting_catalogue_and_does_not_repeat_it():
    """docs/troubleshooting.md is the only copy of the bad-input catalogue."""
    assert "](docs/troubleshooting.md)" in README
    doc = (ROOT / "docs" / "troubleshooting.md").read_text()
    catalogue = doc[doc.index("## Bad inputs") : doc.index("\n## ", doc.index("## Bad inputs") + 1)]
    rows = [line for line in catalogue.splitlines() if re.match(r"\| [A-Z]\d+ \|", line)]
    assert len(rows) > 50, "the catalogue's rows were not found"
    readme_lines = {line.strip() for line in README.splitlines()}
    assert not [row for row in rows if row.strip() in readme_lines]
    assert not re.search(r"^\| [CQMKPLR]\d+ \|", README, re.M), "a catalogue row is in the README"


def test_the_readme_is_a_front_door():
    assert len(README.splitlines()) <= 250
    assert not re.findall(r"\b[0-9a-f]{7,40}\b", README), "commit hashes belong in docs/results.md"
    assert not re.search(r"(?i)\bissues?\s*#?\d|#\d", README), "issue numbers belong in the lab notes"


def test_every_relative_link_in_the_readme_exists():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if "://" not in link]
    assert local, "no relative links found"
    assert not [link for link in local if not (ROOT / link).exists()]
