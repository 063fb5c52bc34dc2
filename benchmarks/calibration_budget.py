"""The 2-bit preset at several calibration budgets and k-means iteration counts: validation and test perplexity.

Each row quantizes the default model with the 2-bit preset, changing only the calibration (``nsamples`` windows of
``seqlen`` tokens of the WikiText-2 validation split, as the presets draw them) or ``kmeans_iters``. It is then
evaluated on the first ``--val-windows`` validation windows of 2048 tokens (the figure to choose by) and on the
first ``--windows`` test windows (the windows of ``accuracy.csv``, for reference only).

``cpu_seconds`` is the process's CPU time for the quantization. The script is meant to run with one thread, where
that is the wall time the row would take alone, even when it ran beside another job or was paused (say which in
``--beside``). Rows are cached in ``benchmarks/results/calibration_budget.cache.jsonl`` by the code version, so an
interrupted run resumes at the next row. Writes ``calibration_budget.csv`` and ``.md``.

The calibration windows are random windows of the validation split, so they can overlap the validation windows
that are evaluated: the validation figure slightly favours larger calibration sets. The test figure has no
such overlap.

    OMP_NUM_THREADS=1 python benchmarks/calibration_budget.py --rows 32x512,128x512
"""

from __future__ import annotations

import argparse
import json
import time

import pandas as pd
import torch
from _bench import RESULTS, markdown_table

from vptq_lab import calibration_windows, load_model, load_wikitext2, perplexity, preset, quantize_
from vptq_lab.lab.compare import cache_versions, code_commit, current_rows, peak_rss

CACHE = RESULTS / "calibration_budget.cache.jsonl"
ROWS = {  # name -> changes to the 2-bit preset
    "32x512": {},  # the preset itself
    "128x512": {"nsamples": 128},
    "64x2048": {"nsamples": 64, "seqlen": 2048},
    "32x512-iters20": {"kmeans_iters": 20},
}


def run_row(name: str, windows: int, val_windows: int, beside: str) -> dict:
    commit = code_commit()  # the code that runs, read before the long work
    config = preset(2).replace(**ROWS[name])
    model, tokenizer = load_model("default")
    with peak_rss() as memory:
        calib = calibration_windows(
            tokenizer, load_wikitext2("validation"), config.nsamples, config.seqlen, config.seed
        )
        cpu = time.process_time()
        report = quantize_(model, config, calib)
        cpu = time.process_time() - cpu
    val = perplexity(model, tokenizer, split="validation", max_windows=val_windows)
    test = perplexity(model, tokenizer, max_windows=windows)
    return {
        "row": name,
        "nsamples": config.nsamples,
        "seqlen": config.seqlen,
        "kmeans_iters": config.kmeans_iters,
        "calibration_tokens": config.nsamples * config.seqlen,
        "bits_per_weight": round(report.total_bits_per_weight(), 4),
        "val_perplexity": round(val.perplexity, 4),
        "val_windows": val.windows,
        "test_perplexity": round(test.perplexity, 4),
        "test_windows": test.windows,
        "cpu_seconds": round(cpu, 1),
        "peak_rss_gb": round(memory["peak_gib"] * 2**30 / 1e9, 3),
        "threads": torch.get_num_threads(),
        "beside": beside,
        "commit": commit,
    }


def write() -> pd.DataFrame:
    table = pd.DataFrame(list(current_rows(CACHE).values()))
    if table.empty:
        return table
    table = table.sort_values("val_perplexity")
    table.to_csv(RESULTS / "calibration_budget.csv", index=False)
    (RESULTS / "calibration_budget.md").write_text(markdown_table(table))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="32x512,128x512", help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--windows", type=int, default=32, help="test windows of 2048 tokens")
    parser.add_argument("--val-windows", type=int, default=16, help="validation windows of 2048 tokens")
    parser.add_argument("--beside", default="nothing", help="what else ran on the machine (recorded in the row)")
    args = parser.parse_args()
    unknown = [r for r in args.rows.split(",") if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    done = current_rows(CACHE)
    for name in args.rows.split(","):
        key = json.dumps(
            {"row": name, "windows": args.windows, "val_windows": args.val_windows, **cache_versions()}, sort_keys=True
        )
        if key in done:
            continue
        row = run_row(name, args.windows, args.val_windows, args.beside)
        with CACHE.open("a") as fh:
            fh.write(json.dumps({"key": key, "row": row}) + "\n")
        print(row, flush=True)
    print(write().to_string(index=False))


if __name__ == "__main__":
    main()
