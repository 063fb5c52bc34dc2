"""Issue 3's whole-model table: the default model at the 2/3/4-bit presets, both propagation modes,
layer-wise fine-tuning on and off, and the full-precision row, all on the same WikiText-2 test windows.

Rows are computed through `vptq_lab.lab.compare` and cached (one JSON line each), so several lanes can
run side by side and an interrupted run resumes:

    OMP_NUM_THREADS=1 python benchmarks/vptq_table.py --rows vptq2,vptq3
    OMP_NUM_THREADS=1 python benchmarks/vptq_table.py --rows fp,vptq2-fullprec,vptq4
    python benchmarks/vptq_table.py --rows none        # only rebuild the CSV/markdown from the cache
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import pandas as pd
import torch
from _bench import markdown_table, with_file_mb

from vptq_lab.core.config import preset
from vptq_lab.lab.compare import CompareSettings, compare
from vptq_lab.lab.results import current_rows

RESULTS = Path("benchmarks/results")


def row_plan(finetune_steps: int, finetune_batch: int = 1) -> dict[str, tuple[str, int, object]]:
    return {
        "fp": ("fp", 16, None),
        "vptq2": ("vptq", 2, preset(2)),
        "vptq3": ("vptq", 3, preset(3)),
        "vptq4": ("vptq", 4, preset(4)),
        "vptq2-fullprec": ("vptq", 2, preset(2).replace(propagation="full_precision")),
        "vptq2-finetune": (
            "vptq",
            2,
            preset(2).replace(finetune=True, finetune_steps=finetune_steps, finetune_batch=finetune_batch),
        ),
    }


def run(names: list[str], settings: CompareSettings, cache: Path, finetune_steps: int, finetune_batch: int) -> None:
    plan = row_plan(finetune_steps, finetune_batch)
    for name in names:
        method, bits, config = plan[name]
        if method == "fp":
            compare("default", [], [], settings=settings, cache=cache, include_fp=True)
        else:
            compare(
                "default",
                [method],
                [bits],
                settings=settings,
                cache=cache,
                include_fp=False,
                configs={(method, bits): config},
            )


def label(row: pd.Series) -> str:
    if row.method == "fp":
        return "full precision (Q4_1 GGUF, ~4-bit rounded already)"
    cfg = json.loads(row.config)
    tags = [cfg["propagation"].replace("_", "-") + " propagation"]
    if cfg["finetune"]:
        per_step = cfg.get("finetune_batch") or 4  # 0: one capture batch, 4 sequences in quantize_
        tags.append(f"fine-tuned {cfg['finetune_steps']} steps x {per_step} sequence(s) per block")
    else:
        tags.append("no fine-tuning")
    return f"VPTQ {row.target_bits}-bit preset, " + ", ".join(tags)


def write_table(cache: Path) -> pd.DataFrame:
    rows = list(current_rows(cache).values())  # stale rows (other code) never reach the table
    table = with_file_mb(pd.DataFrame(rows))
    table.insert(0, "row", [label(r) for _, r in table.iterrows()])
    table["machine"] = f"{platform.machine()} CPU, {torch.get_num_threads()} torch thread(s) per run"
    table = table.sort_values(["target_bits", "row"])
    table.to_csv(RESULTS / "vptq_table.csv", index=False)
    cols = [
        "row",
        "bits",
        "file_mb",
        "perplexity",
        "proxy_loss_rel_mean",
        "quant_seconds",
        "eval_seconds",
        "peak_rss_gib",
        "commit",
    ]
    (RESULTS / "vptq_table.md").write_text(markdown_table(table[cols]))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="fp,vptq2,vptq3,vptq4,vptq2-fullprec,vptq2-finetune")
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--finetune-steps", type=int, default=100, help="Adam steps per block (fine-tuning row)")
    parser.add_argument(
        "--finetune-batch",
        type=int,
        default=1,
        help="calibration sequences (of 512 tokens) per fine-tuning step; 1 keeps a step ~4x cheaper",
    )
    args = parser.parse_args()
    cache = RESULTS / "vptq_table.cache.jsonl"
    names = [] if args.rows == "none" else args.rows.split(",")
    run(names, CompareSettings(windows=args.windows, seqlen=2048), cache, args.finetune_steps, args.finetune_batch)
    print(write_table(cache).to_string(index=False))


if __name__ == "__main__":
    main()
