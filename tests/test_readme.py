"""The README's promises: two quick-start commands, CI runs the test one, the catalogue is in sync."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_quick_start_has_exactly_two_commands_and_ci_runs_the_test_one():
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", README, re.S).group(1)
    commands = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_troubleshooting_table_matches_the_catalogue(repo_script):
    sync = repo_script("scripts/sync_readme.py")
    assert README == sync.synced(README), "run: python scripts/sync_readme.py"
    assert "| C1 |" in README and "| R1 |" in README
