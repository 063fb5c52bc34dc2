"""Results that benchmarks and `compare` keep: JSON-lines caches of rows keyed by what they measured and by the
version of the code that measured them, the commit they came from, and the peak memory of a run.

A cached row is reused only while ``RESULTS_VERSION`` and the checkpoint format version are the ones it was made
under, so a change that alters what a row measures (bump ``RESULTS_VERSION``) makes every older row stale.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "RESULTS_VERSION",
    "peak_rss",
    "config_key",
    "cache_versions",
    "current_rows",
    "append_row",
    "code_commit",
    "beyond_presets",
]


@contextmanager
def peak_rss(interval: float = 0.05) -> Iterator[dict[str, float]]:
    """Sample this process's resident memory while the block runs; yields {'peak_gib': ...} (filled at exit)."""
    import psutil

    proc, result, stop = psutil.Process(), {"peak_gib": 0.0}, threading.Event()

    def sample() -> None:
        while not stop.is_set():
            result["peak_gib"] = max(result["peak_gib"], proc.memory_info().rss / 2**30)
            stop.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result["peak_gib"] = round(max(result["peak_gib"], proc.memory_info().rss / 2**30), 3)


# Bump when a change to the quantizers, calibration or evaluation changes what a row measures: every cached row
# made under another number is then stale and computed again (docs/results.md's tables come from these caches).
RESULTS_VERSION = 1

# Config fields added after caches were first written: left out of a row's key while they hold their
# default, so rows cached before the field existed are still found (VPTQConfig's, then DistillConfig's).
_KEY_OMIT_AT_DEFAULT = {
    "finetune_batch": 0,
    "codebook_scope": "per-linear",
    "schedule": "constant",
    "train_head": False,
    "code_every": 0,
    "code_lr": 5e-4,
    "code_fraction": 0.01,
    "hidden_weight": 0.0,
}


def config_key(config: Any) -> dict[str, Any]:
    """A config as a cached row's key holds it: its fields, less those added later that still hold their default."""
    return {k: v for k, v in config.to_dict().items() if k not in _KEY_OMIT_AT_DEFAULT or v != _KEY_OMIT_AT_DEFAULT[k]}


def cache_versions() -> dict[str, int]:
    """What every cached row's key carries besides what it measured: the results and checkpoint format versions."""
    from vptq_lab.io.checkpoint import FORMAT_VERSION

    return {"results_version": RESULTS_VERSION, "format_version": FORMAT_VERSION}


def current_rows(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """The rows of a JSON-lines cache that this code would compute the same way (key -> row).

    Rows made under another results or format version are stale: they are left out (so they are computed again)
    and counted in one warning.
    """
    if path is None or not Path(path).is_file():
        return {}
    rows, stale, versions = {}, 0, cache_versions()
    for line in Path(path).read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            key = json.loads(entry["key"])
            if any(key.get(name) != value for name, value in versions.items()):
                stale += 1
            else:
                rows[entry["key"]] = entry["row"]
    if stale:
        log.warning(
            "%s: %d cached row(s) came from other code (%s differ) and will be computed again",
            path,
            stale,
            " or ".join(versions),
        )
    return rows


def append_row(path: Path | None, key: str, row: dict[str, Any]) -> None:
    """Append one completed row under ``key`` to the JSON-lines cache at ``path`` (None: keep nothing)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:  # one whole line per completed row: a crash loses at most the row in flight
        fh.write(json.dumps({"key": key, "row": row}) + "\n")
        fh.flush()


def code_commit(root: str | Path | None = None) -> str:
    """The git commit this code runs from ("+dirty" with uncommitted changes to tracked files other than
    ``benchmarks/results/``, which benchmarks write as they go), else the version. ``root``: another checkout."""
    import subprocess

    import vptq_lab

    root = Path(__file__).resolve().parents[2] if root is None else Path(root)
    try:
        git = ["git", "-C", str(root)]
        commit = subprocess.run(
            [*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"vptq_lab {vptq_lab.__version__} (not a git checkout)"
    return commit + ("+dirty" if dirty else "")


def beyond_presets(accuracy: Any) -> Any:
    """The rows of ``benchmarks/results/accuracy.csv`` (a DataFrame) beyond the uniform presets: the mixed
    allocations and the fine-tuned models, with a ``method`` column naming what each command adds to the preset
    ("VPTQ + --allocate", "VPTQ + e2e + --allocate", "VPTQ + --allocate --role-scale"), as the plots label them."""
    flags = {"uniform": "", "mixed": " + --allocate", "mixed, role-scaled": " + --allocate --role-scale"}
    rows = accuracy[(accuracy.allocation != "uniform") | ~accuracy.recipe.str.endswith("fine-tuning: none")]
    method = [
        ("VPTQ" if r.endswith(": none") else "VPTQ + " + r.split("fine-tuning: ")[1]) + flags[a]
        for r, a in zip(rows.recipe, rows.allocation)
    ]
    return rows.assign(method=method)
