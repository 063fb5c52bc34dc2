"""The 2-bit preset at several calibration budgets, k-means iteration counts and seeds: held-out and test perplexity.

Each row quantizes the default model with the 2-bit preset, changing only the calibration (``nsamples`` random
windows of ``seqlen`` tokens) or ``kmeans_iters`` or ``seed``. The validation split is cut in two: its last
``--val-windows`` whole windows of 2048 tokens are held out, and every row draws its calibration windows from the
text before them (``split_heldout``), so the held-out perplexity, the figure to choose by, never sees calibration
text. The test perplexity (the first ``--windows`` windows, those of ``accuracy.csv``) is for reference only.

The ``32x512`` row is the preset's recipe, but its windows come from the text before the held-out tail, not from the
whole validation split as ``vptq-lab quantize`` draws them, so its test figure can differ a little from
``accuracy.csv``'s preset row. The ``seed1`` row changes only the seed: the spread between it and ``32x512`` is the
noise floor that any other row's gain must beat.

``cpu_seconds`` is the process's CPU time for the quantization. Run it with one thread, where that is the time the
row would take alone even when it ran beside another job (say which in ``--beside``). Rows are cached in
``benchmarks/results/calibration_budget.cache.jsonl``, so an interrupted run resumes at the next row, and two
processes can share the rows (``--rows``). Writes ``calibration_budget.csv`` and ``.md``.

    OMP_NUM_THREADS=1 python experiments/calibration_budget.py --rows 32x512,128x512,64x2048
"""

from __future__ import annotations

import argparse
import json
import time

import _bench_path  # noqa: F401  (puts benchmarks/ on sys.path, for _bench)
import pandas as pd
import torch
from _bench import RESULTS, markdown_table

from vptq_lab import load_model, load_wikitext2, perplexity, quantize_
from vptq_lab.core.config import preset
from vptq_lab.io.data import split_heldout, tokenize
from vptq_lab.lab.results import cache_versions, code_commit, current_rows, peak_rss

CACHE = RESULTS / "calibration_budget.cache.jsonl"
HELDOUT_SEQLEN = 2048
ROWS = {  # name -> changes to the 2-bit preset
    "32x512": {},  # the preset's recipe
    "seed1": {"seed": 1},  # the same recipe with another seed: the noise floor
    "128x512": {"nsamples": 128},
    "64x2048": {"nsamples": 64, "seqlen": 2048},
    "32x512-iters20": {"kmeans_iters": 20},
    "32x512-iters5": {"kmeans_iters": 5},
    # the preset's recipe again, at a later commit than the rows above it: equal figures show that the quantizer did
    # not change between them (quantization is deterministic for a seed and thread count)
    "32x512-again": {},
}


def calibration_and_heldout(tokenizer, nsamples: int, seqlen: int, seed: int, val_windows: int) -> tuple:
    """Calibration windows [nsamples, seqlen] from the validation text before its last ``val_windows`` windows of
    2048 tokens, and those held-out windows [val_windows, 2048]."""
    ids = tokenize(tokenizer, load_wikitext2("validation"))  # [1, n]
    cut = ids.numel() - val_windows * HELDOUT_SEQLEN
    _, held = split_heldout(ids, HELDOUT_SEQLEN, 1, val_windows, seed)
    calib, _ = split_heldout(ids[:, :cut], seqlen, nsamples, 1, seed)  # the one window it holds out is unused
    return calib, held


def heldout_perplexity(model, held: torch.Tensor) -> float:
    return perplexity(model, windows=held, progress=False).perplexity


def run_row(name: str, windows: int, val_windows: int, beside: str) -> dict:
    commit = code_commit()  # the code that runs, read before the long work
    config = preset(2).replace(**ROWS[name])
    model, tokenizer = load_model("default")
    calib, held = calibration_and_heldout(tokenizer, config.nsamples, config.seqlen, config.seed, val_windows)
    with peak_rss() as memory:
        cpu = time.process_time()
        report = quantize_(model, config, calib)
        cpu = time.process_time() - cpu
    val = heldout_perplexity(model, held)
    test = perplexity(model, tokenizer, max_windows=windows)
    return {
        "row": name,
        "nsamples": config.nsamples,
        "seqlen": config.seqlen,
        "kmeans_iters": config.kmeans_iters,
        "seed": config.seed,
        "calibration_tokens": config.nsamples * config.seqlen,
        "bits_per_weight": round(report.total_bits_per_weight(), 4),
        "heldout_perplexity": round(val, 4),
        "heldout_windows": held.shape[0],
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
    table = table.sort_values("heldout_perplexity")
    table.to_csv(RESULTS / "calibration_budget.csv", index=False)
    (RESULTS / "calibration_budget.md").write_text(markdown_table(table))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--windows", type=int, default=32, help="test windows of 2048 tokens (reference only)")
    parser.add_argument("--val-windows", type=int, default=8, help="held-out validation windows of 2048 tokens")
    parser.add_argument("--beside", default="nothing", help="what else ran on the machine (recorded in the row)")
    args = parser.parse_args()
    unknown = [r for r in args.rows.split(",") if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    for name in args.rows.split(","):
        key = json.dumps(
            {"row": name, "windows": args.windows, "val_windows": args.val_windows, **cache_versions()}, sort_keys=True
        )
        if key in current_rows(CACHE):  # read again each time: another process may have written it
            continue
        row = run_row(name, args.windows, args.val_windows, args.beside)
        with CACHE.open("a") as fh:
            fh.write(json.dumps({"key": key, "row": row}) + "\n")
        print(row, flush=True)
    print(write().to_string(index=False))


if __name__ == "__main__":
    main()
