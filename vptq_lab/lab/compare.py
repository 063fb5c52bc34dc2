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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from vptq_lab.errors import VPTQLabError
from vptq_lab.lab.results import (
    RESULTS_VERSION,
    append_row,
    cache_versions,
    code_commit,
    config_key,
    current_rows,
    peak_rss,
)

log = logging.getLogger(__name__)

__all__ = ["compare", "CompareSettings"]

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


def _row_key(model: str, method: str, config: Any, settings: CompareSettings) -> str:
    """What a cached row measured: model, method, config, windows and calibration, plus the versions of the code
    that computed it and of the checkpoint format."""
    key = {"model": model, "method": method, "config": config_key(config), **settings.key(), **cache_versions()}
    return json.dumps(key, sort_keys=True)


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
            append_row(cache_path, key, done[key])
        rows.append(done[key])
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


class _FPConfig:
    def to_dict(self) -> dict[str, Any]:
        return {}


_FP = _FPConfig()
