"""The best recipe per budget on the default model, each made by the command a user runs, on the same test windows.

Every row runs :func:`vptq_lab.run_recipe` from the default model (what ``vptq-lab quantize`` runs), from scratch,
then measures WikiText-2 perplexity on the first ``--windows`` test windows of 2048 tokens. Rows are cached in
``benchmarks/results/accuracy.cache.jsonl`` (one JSON line each, keyed by the recipe, the windows and the code's
results and format versions), so a rerun computes only what is missing; a row killed midway resumes from its block
and distillation checkpoints under ``artifacts/accuracy/``. Writes ``benchmarks/results/accuracy.csv`` and
``accuracy.md``.

    python benchmarks/accuracy.py --rows 2-preset,2-best      # two threads; say what else ran beside a row

The table of earlier sessions' recipes (their sweeps included) is ``accuracy_history.csv``; docs/results.md and the
lab notes tell that story.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from _bench import RESULTS, add_malloc_arg, apply_malloc, markdown_table

from vptq_lab import Recipe, load_model, perplexity, recipe, run_recipe
from vptq_lab.lab.allocation import read_role_scale
from vptq_lab.lab.results import append_row, cache_versions, code_commit, current_rows, peak_rss

CACHE = RESULTS / "accuracy.cache.jsonl"
CHECKPOINTS = Path("artifacts") / "accuracy"  # per row: block and distillation checkpoints, to resume a killed row
MODELS = Path("artifacts") / "accuracy-models"  # per row: the saved model (official layout), as the command saves it
COLUMNS = [
    "row",
    "budget",
    "recipe",
    "allocation",
    "bits_per_weight",
    "perplexity",
    "windows",
    "fp_perplexity",
    "quantize_seconds",
    "peak_rss_gb",
    "best",
    "command",
    "commit",
    "details",
]

# row -> (the recipe, the command that runs it, the allocation it uses): per budget, the preset alone and the best
# fine-tuning, each with one config for every linear, with a config per linear (--allocate), and with a config per
# linear whose predicted costs are scaled per role by the sensitivity check (--role-scale, benchmarks/sensitivity.py)
FINETUNE = {2: "e2e", 3: "layer+e2e", 4: "layer+e2e"}
ROLE_SCALE = RESULTS / "role_scale.json"
ALLOCATIONS = {"": ("uniform", ""), "-mixed": ("mixed", " --allocate")}
ALLOCATIONS["-mixed-scaled"] = ("mixed, role-scaled", " --allocate --role-scale benchmarks/results/role_scale.json")
ROWS: dict[str, tuple[Callable[[], Recipe], str, str]] = {}
for _b in (2, 3, 4):
    for _stage, _mode in (("preset", "none"), ("best", FINETUNE[_b])):
        for _suffix, (_allocation, _allocate_flags) in ALLOCATIONS.items():
            _flags = (f" --finetune {_mode}" if _mode != "none" else "") + _allocate_flags
            ROWS[f"{_b}-{_stage}{_suffix}"] = (
                lambda b=_b, m=_mode, x=_suffix: recipe(
                    b, finetune=m, allocate=bool(x), role_scale=read_role_scale(ROLE_SCALE) if "scaled" in x else None
                ),
                f"vptq-lab quantize --bits {_b}{_flags} --out DIR",
                _allocation,
            )


def _key(name: str, windows: int) -> str:
    return json.dumps({"row": name, "recipe": ROWS[name][0]().to_dict(), "windows": windows, **cache_versions()})


def run_row(name: str, windows: int, data_dir: str | None) -> dict:
    make, command, allocation = ROWS[name]
    the_recipe = make()
    commit = code_commit()  # the code that runs, read before the long work
    ckpt = CHECKPOINTS / name
    with peak_rss() as memory:
        start, cpu = time.perf_counter(), time.process_time()
        run = run_recipe(the_recipe, data_dir=data_dir, checkpoint_dir=ckpt, resume=ckpt.is_dir())
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu
        recipe_rss = memory["peak_gib"]
        rec = perplexity(run.model, run.tokenizer, max_windows=windows, data_dir=data_dir)
    if not (MODELS / name).exists():
        run.save(MODELS / name)
    report = run.quantization
    before = report.seconds_before_resume or 0.0  # resumed after a kill: the earlier runs' blocks count too
    details = {
        "quantize_s": report.seconds,
        "quantize_s_before_resume": report.seconds_before_resume,
        "timings": report.timings,
        "recipe_cpu_seconds": round(cpu, 1),
        "recipe_peak_rss_gb": round(recipe_rss * 2**30 / 1e9, 3),
        "stored_bits_per_weight": round(report.total_bits_per_weight(stored=True), 4),
        "distill": run.distill.to_dict() if run.distill is not None else None,
        "allocation": run.extra.get("allocation"),
    }
    return {
        "row": name,
        "budget": the_recipe.bits,
        "recipe": f"{the_recipe.bits}-bit preset, fine-tuning: {the_recipe.finetune}",
        "allocation": allocation,
        "bits_per_weight": round(report.total_bits_per_weight(), 4),
        "perplexity": round(rec.perplexity, 4),
        "windows": rec.windows,
        "quantize_seconds": round(seconds + before, 1),
        "peak_rss_gb": round(memory["peak_gib"] * 2**30 / 1e9, 3),
        "command": command,
        "commit": commit,
        "threads": torch.get_num_threads(),
        "comparable": rec.comparable,
        "details": json.dumps(details),
    }


def full_precision(windows: int, data_dir: str | None) -> dict:
    model, tokenizer = load_model("default")
    rec = perplexity(model, tokenizer, max_windows=windows, data_dir=data_dir)
    return {"row": "fp", "perplexity": round(rec.perplexity, 4), "windows": rec.windows, "commit": code_commit()}


def write(windows: int) -> pd.DataFrame:
    rows = current_rows(CACHE)
    fp = next((r for k, r in rows.items() if json.loads(k)["row"] == "fp" and r["windows"] == windows), None)
    table = pd.DataFrame([r for k, r in rows.items() if json.loads(k)["row"] != "fp"])
    if table.empty:
        return table
    table = table[table.windows == windows].copy()
    table["fp_perplexity"] = fp["perplexity"] if fp else float("nan")
    best = table[table.bits_per_weight <= table.budget].groupby("budget").perplexity.idxmin()
    table["best"] = table.index.isin(best.values)
    table = table.sort_values(["budget", "perplexity"])[COLUMNS]
    table.to_csv(RESULTS / "accuracy.csv", index=False)
    (RESULTS / "accuracy.md").write_text(markdown_table(table.drop(columns=["details"])))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="none", help=f"comma-separated, of fp, {', '.join(ROWS)}; none: table only")
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--data-dir", default=None, help="WikiText-2 raw folder (default: $VPTQ_LAB_DATA)")
    parser.add_argument("--rerun", action="store_true", help="measure the rows again even if they are cached")
    add_malloc_arg(parser)
    args = parser.parse_args()
    apply_malloc(parser, args)
    names = [] if args.rows == "none" else args.rows.split(",")
    unknown = sorted(set(names) - set(ROWS) - {"fp"})
    if unknown:
        parser.error(f"unknown rows {unknown}: choose from fp, {', '.join(ROWS)}")
    done = current_rows(CACHE)
    for name in names:
        key = json.dumps({"row": "fp", "windows": args.windows, **cache_versions()}) if name == "fp" else None
        key = key or _key(name, args.windows)
        if key in done and not args.rerun:
            continue
        if name != "fp" and args.rerun and (CHECKPOINTS / name).exists():
            parser.error(f"{name}: {CHECKPOINTS / name} holds an earlier run's checkpoints; move or delete it first")
        row = (
            full_precision(args.windows, args.data_dir) if name == "fp" else run_row(name, args.windows, args.data_dir)
        )
        append_row(CACHE, key, row)
        print(row, flush=True)
    print(write(args.windows).drop(columns=["details"], errors="ignore").to_string(index=False))


if __name__ == "__main__":
    main()
