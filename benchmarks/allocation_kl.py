"""Does mixed allocation lower the KL it predicts? The saved accuracy models, measured against the unquantized one.

    python benchmarks/allocation_kl.py      # after accuracy.py has saved the rows' models (artifacts/accuracy-models)

For each saved row without fine-tuning (uniform, mixed, mixed with the role scale): the mean per-token
KL(unquantized || quantized) on the distillation's 8 held-out validation windows of 512 tokens, beside the KL the
allocation predicted for it (the sum over linears of the sensitivity table's prediction at the linear's rung), raw
and scaled per role by ``role_scale.json``. The perplexity column is accuracy.csv's (32 test windows of 2048).
Writes ``benchmarks/results/allocation_kl.csv``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch
from _bench import RESULTS, markdown_table

from vptq_lab import load_model, load_quantized, load_wikitext2, split_heldout, tokenize
from vptq_lab.lab.allocation import read_role_scale
from vptq_lab.lab.recipes import DISTILL_WINDOWS
from vptq_lab.lab.results import code_commit
from vptq_lab.model.logprobs import window_nll_kl

MODELS = RESULTS.parent.parent / "artifacts" / "accuracy-models"
PRESET_RUNG = {2: "1.99 v5 k512 (2-bit preset)", 3: "2.96 (3-bit preset)", 4: "3.96 (4-bit preset)"}


def predicted(row: pd.Series, table: pd.DataFrame, scale: dict[str, float]) -> tuple[float, float]:
    """The allocation's predicted KL for an accuracy row (raw, role-scaled): each linear at its rung."""
    details = json.loads(row.details)
    allocation = details.get("allocation")
    rungs = allocation["per_linear"] if allocation else dict.fromkeys(table.linear.unique(), PRESET_RUNG[row.budget])
    by = table.set_index(["linear", "rung"])
    chosen = by.loc[list(rungs.items())]
    raw = float(chosen.predicted_kl.sum())
    scaled = float((chosen.predicted_kl * chosen.role.map(scale)).sum())
    return raw, scaled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="WikiText-2 raw folder (default: $VPTQ_LAB_DATA)")
    parser.add_argument("--models", default=str(MODELS), help="the folder of accuracy.py's saved models")
    args = parser.parse_args()
    models = Path(args.models)
    rows = pd.read_csv(RESULTS / "accuracy.csv")
    rows = rows[rows.row.str.contains("preset") & rows.row.map(lambda r: (models / r).is_dir())]
    if rows.empty:
        parser.error(f"no saved model of a preset row in {models}: run benchmarks/accuracy.py first")
    table = pd.read_csv(RESULTS / "sensitivity.csv")
    scale = read_role_scale(RESULTS / "role_scale.json")
    teacher, tokenizer = load_model("default")
    _, held = split_heldout(tokenize(tokenizer, load_wikitext2("validation", args.data_dir)), **DISTILL_WINDOWS)
    out = []
    for row in rows.itertuples():
        start = time.perf_counter()
        model, _ = load_quantized(models / row.row)
        with torch.no_grad():
            kl = sum(window_nll_kl(model, teacher, w)[1] for w in held) / len(held)
        raw, scaled = predicted(pd.Series(row._asdict()), table, scale)
        out.append(
            {
                "row": row.row,
                "budget": row.budget,
                "allocation": row.allocation,
                "bits_per_weight": row.bits_per_weight,
                "measured_kl": round(kl, 4),
                "predicted_kl": round(raw, 4),
                "predicted_kl_role_scaled": round(scaled, 4),
                "perplexity": row.perplexity,
                "row_commit": row.commit,
                "commit": code_commit(),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        print(out[-1], flush=True)
    found = pd.DataFrame(out).sort_values(["budget", "allocation"])
    found.to_csv(RESULTS / "allocation_kl.csv", index=False)
    (RESULTS / "allocation_kl.md").write_text(markdown_table(found))
    print(found.to_string(index=False))


if __name__ == "__main__":
    main()
