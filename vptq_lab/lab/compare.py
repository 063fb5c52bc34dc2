"""Compare methods at equal bit budgets: `compare(model, methods, budgets)` -> DataFrame.

Every row quantizes a fresh copy of the model with one method at one budget,
evaluates it on the same WikiText-2 windows, and records the bits actually paid
(overhead included), perplexity, mean relative proxy loss, time and peak memory.
Completed rows are appended to a JSON-lines cache, so a rerun (or an
interrupted run) never redoes them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from vptq_lab.errors import VPTQLabError

log = logging.getLogger(__name__)

__all__ = [
    "compare",
    "CompareSettings",
    "peak_rss",
    "current_rows",
    "cache_versions",
    "config_key",
    "code_commit",
    "RESULTS_VERSION",
]

COLUMNS = [
    "model",
    "method",
    "target_bits",
    "bits",
    "file_mb",
    "perplexity",
    "proxy_loss_rel_mean",
    "quant_seconds",
    "eval_seconds",
    "peak_rss_gib",
    "windows",
    "seqlen",
    "calibration",
    "propagation",
    "config",
    "note",
    "commit",
]


@dataclass(frozen=True)
class CompareSettings:
    """What every row shares: the evaluation windows and the calibration set."""

    windows: int = 32
    seqlen: int = 2048
    nsamples: int | None = None  # None: each config's own nsamples
    calib_seqlen: int | None = None
    data_dir: str | None = None
    seed: int = 0

    def key(self) -> dict[str, Any]:
        return {
            "windows": self.windows,
            "seqlen": self.seqlen,
            "nsamples": self.nsamples,
            "calib_seqlen": self.calib_seqlen,
            "seed": self.seed,
        }


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


def _row_key(model: str, method: str, config: Any, settings: CompareSettings) -> str:
    """What a cached row measured: model, method, config, windows and calibration, plus the versions of the code
    that computed it and of the checkpoint format."""
    key = {"model": model, "method": method, "config": config_key(config), **settings.key(), **cache_versions()}
    return json.dumps(key, sort_keys=True)


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


def _append_cache(path: Path | None, key: str, row: dict[str, Any]) -> None:
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


def _config_for(method: str, bits: int, config: Any | None):
    from vptq_lab.core.methods import METHODS, method_preset

    if method not in METHODS and method != "fp":
        raise VPTQLabError(f"unknown method {method!r}: choose from fp, {', '.join(METHODS)}")
    return config if config is not None else method_preset(method, bits)


def _run_row(
    model_name: str, method: str, bits: int, config: Any, settings: CompareSettings, progress: bool
) -> dict[str, Any]:
    from vptq_lab.io.checkpoint import checkpoint_bytes
    from vptq_lab.io.data import calibration_windows, load_wikitext2
    from vptq_lab.io.models import BASELINE_NOTE, DEFAULT_NAMES, load_model
    from vptq_lab.lab.eval import perplexity
    from vptq_lab.model.calibrate import quantize_

    model, tokenizer = load_model(model_name)
    row: dict[str, Any] = {
        "model": model_name,
        "method": method,
        "target_bits": bits,
        "windows": settings.windows,
        "seqlen": settings.seqlen,
        "note": BASELINE_NOTE if model_name in DEFAULT_NAMES else "",
    }
    with peak_rss() as memory:
        start = time.perf_counter()
        if method != "fp":
            nsamples = settings.nsamples or getattr(config, "nsamples", 32)
            calib_len = settings.calib_seqlen or getattr(config, "seqlen", 512)
            calib = calibration_windows(
                tokenizer, load_wikitext2("validation", settings.data_dir), nsamples, calib_len, settings.seed
            )
            report = quantize_(model, config, calib, method=method, progress=progress)
            if method in ("vq", "vptq"):  # the scalar baselines have no packed file format
                row["file_mb"] = round(checkpoint_bytes(model) / 2**20, 2)
            df = report.to_dataframe()
            row.update(
                bits=round(report.total_bits_per_weight(), 4),
                proxy_loss_rel_mean=round(float(df.proxy_loss_rel.mean()), 6),
                calibration=f"{nsamples}x{calib_len} wikitext2 validation",
                propagation=report.propagation,
                config=json.dumps(config.to_dict(), sort_keys=True),
            )
        else:
            row.update(bits=16.0, proxy_loss_rel_mean=0.0, calibration="", propagation="", config="{}")
        row["quant_seconds"] = round(time.perf_counter() - start, 1)
        rec = perplexity(
            model,
            tokenizer,
            seqlen=settings.seqlen,
            max_windows=settings.windows,
            data_dir=settings.data_dir,
            progress=progress,
        )
    row.update(perplexity=round(rec.perplexity, 4), eval_seconds=rec.seconds, peak_rss_gib=memory["peak_gib"])
    row.update(commit=code_commit(), results_version=RESULTS_VERSION)
    if not rec.comparable:
        row["note"] = (row["note"] + "; " if row["note"] else "") + "stand-in corpus, not WikiText-2"
    return row


def compare(
    model: str = "default",
    methods: Sequence[str] = ("rtn", "gptq", "vq", "vptq"),
    budgets: Sequence[int] = (2, 3, 4),
    *,
    settings: CompareSettings = CompareSettings(),
    configs: dict[tuple[str, int], Any] | None = None,
    cache: str | Path | None = None,
    include_fp: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """Quantize ``model`` with each method at each budget and evaluate all on the same windows.

    ``configs`` overrides the preset for a (method, bits) pair. Rows already in ``cache`` are reused.
    Returns a DataFrame with :data:`COLUMNS`.
    """
    cache_path = Path(cache) if cache is not None else None
    done = current_rows(cache_path)
    plan = ([("fp", 16, None)] if include_fp else []) + [
        (m, b, _config_for(m, b, (configs or {}).get((m, b)))) for m in methods for b in budgets
    ]
    rows = []
    for method, bits, config in plan:
        key = _row_key(model, method, config if config is not None else _FP, settings)
        if key not in done:
            done[key] = _run_row(model, method, bits, config, settings, progress)
            _append_cache(cache_path, key, done[key])
        rows.append(done[key])
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


class _FPConfig:
    def to_dict(self) -> dict[str, Any]:
        return {}


_FP = _FPConfig()
