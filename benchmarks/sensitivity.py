"""Per-linear sensitivity of the default model on the allocation ladder, and how well the prediction ranks reality.

    python benchmarks/sensitivity.py            # the table (cached; about an hour the first time), then the check

1. The sensitivity table (:func:`vptq_lab.lab.allocation.model_sensitivity`): every linear at every rung of the
   ladder, its exact bits and its predicted KL (½ Σ_i G_i (ΔW H ΔWᵀ)_ii). Written to
   ``benchmarks/results/sensitivity.csv``.
2. The check: a sample of linears, every role at blocks 0, 10, 20 and 29, each quantized *alone* at two rungs
   (:func:`vptq_lab.model.sensitivity.measured_kl`), and the held-out KL to the unquantized model measured on the
   distillation's held-out validation windows. The Spearman rank correlation of the prediction with the
   measurement, beside that of the plain proxy losses (absolute and relative), goes to ``sensitivity_check.json``
   and the measurements to ``sensitivity_check.csv``.
3. The role scale: per role, the geometric mean of measured / predicted KL over the check
   (:func:`vptq_lab.lab.allocation.role_scale_from_check`), written to ``role_scale.json`` for
   ``vptq-lab quantize --allocate --role-scale``.

    python benchmarks/sensitivity.py --summary-only   # 2 and 3 again from sensitivity_check.csv, measuring nothing
"""

from __future__ import annotations

import argparse
import json
import time

import pandas as pd
import torch
from _bench import RESULTS

from vptq_lab import load_model, load_wikitext2, split_heldout, tokenize
from vptq_lab.lab.allocation import ladder, model_sensitivity, role_scale_from_check, sensitivity_cache_file
from vptq_lab.lab.plots import spearman
from vptq_lab.lab.recipes import DISTILL_WINDOWS
from vptq_lab.lab.results import code_commit
from vptq_lab.model.passes import block_hessians

BLOCKS = (0, 10, 20, 29)
RUNGS = ("1.70 v5 k256", "2.40 v4 k512")


def check(table: pd.DataFrame, data_dir: str | None, windows: int, blocks: tuple[int, ...] = BLOCKS) -> pd.DataFrame:
    """Measured held-out KL of each sampled linear quantized alone, beside the table's predictions."""
    from vptq_lab.core.config import preset
    from vptq_lab.io.data import calibration_windows
    from vptq_lab.model.sensitivity import measured_kl

    model, tokenizer = load_model("default")
    teacher, _ = load_model("default")
    _, held = split_heldout(tokenize(tokenizer, load_wikitext2("validation", data_dir)), **DISTILL_WINDOWS)
    held = held[:windows]
    base = preset(2)
    calibration = calibration_windows(tokenizer, load_wikitext2("validation", data_dir), base.nsamples, base.seqlen)
    rungs = dict(ladder())
    rows = []
    for block in blocks:
        hessians = block_hessians(model, calibration, block)
        for leaf, (_, H) in hessians.items():
            name = f"model.layers.{block}.{leaf}"
            for rung in RUNGS:
                start = time.perf_counter()
                kl = measured_kl(model, teacher, name, rungs[rung], H, held)
                row = table[(table.linear == name) & (table.rung == rung)].iloc[0]
                rows.append(
                    {
                        "linear": name,
                        "block": block,
                        "role": row.role,
                        "rung": rung,
                        "measured_kl": kl,
                        "predicted_kl": row.predicted_kl,
                        "proxy_loss": row.proxy_loss,
                        "proxy_loss_rel": row.proxy_loss_rel,
                        "seconds": round(time.perf_counter() - start, 1),
                    }
                )
                print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def summarize(found: pd.DataFrame) -> dict:
    """The check's agreement (Spearman, overall and per rung) and the role scale it measures."""
    return {
        "linears": int(found.linear.nunique()),
        "measurements": len(found),
        "spearman": {
            est: round(spearman(found[est], found.measured_kl), 4)
            for est in ("predicted_kl", "proxy_loss", "proxy_loss_rel")
        },
        "spearman_within_rung": {
            rung: round(spearman(g.predicted_kl, g.measured_kl), 4) for rung, g in found.groupby("rung")
        },
        "role_scale": role_scale_from_check(found),
    }


def write_role_scale(summary: dict) -> None:
    (RESULTS / "role_scale.json").write_text(json.dumps(summary["role_scale"], indent=1, sort_keys=True) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="WikiText-2 raw folder (default: $VPTQ_LAB_DATA)")
    parser.add_argument("--windows", type=int, default=DISTILL_WINDOWS["heldout"], help="held-out windows of 512")
    parser.add_argument(
        "--blocks", default=",".join(map(str, BLOCKS)), help="the blocks whose linears the check samples"
    )
    parser.add_argument("--no-check", action="store_true", help="the table only")
    parser.add_argument(
        "--summary-only",
        action="store_true",
        help="recompute the check's summary and role scale from sensitivity_check.csv (its commit kept); no model",
    )
    args = parser.parse_args()
    if args.summary_only:
        old = json.loads((RESULTS / "sensitivity_check.json").read_text())
        summary = {**old, **summarize(pd.read_csv(RESULTS / "sensitivity_check.csv"))}
        (RESULTS / "sensitivity_check.json").write_text(json.dumps(summary, indent=1) + "\n")
        write_role_scale(summary)
        print(json.dumps(summary, indent=1))
        return
    commit = code_commit()
    cached = sensitivity_cache_file("default").is_file()  # then the table is read, and its time is not the build's
    start = time.perf_counter()
    table = model_sensitivity("default", data_dir=args.data_dir)
    seconds = time.perf_counter() - start
    table.assign(commit=commit).to_csv(RESULTS / "sensitivity.csv", index=False)
    summary = {
        "commit": commit,
        "threads": torch.get_num_threads(),
        "table_seconds": None if cached else round(seconds, 1),
        "table_from_cache": cached,
    }
    if not args.no_check:
        found = check(table, args.data_dir, args.windows, tuple(int(b) for b in args.blocks.split(",")))
        found.to_csv(RESULTS / "sensitivity_check.csv", index=False)
        summary.update(blocks=args.blocks, held_out_tokens=args.windows * DISTILL_WINDOWS["seqlen"], **summarize(found))
        write_role_scale(summary)
    (RESULTS / "sensitivity_check.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
