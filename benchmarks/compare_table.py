"""Issue 4's table: RTN, GPTQ, plain VQ and VPTQ at their 2/3/4-bit presets on the default model.

Rows come from ``vptq_lab.lab.compare`` and its JSON-lines cache (``benchmarks/results/compare.cache.jsonl``),
so this script only computes the rows the cache lacks. Several lanes can fill the cache side by side:

    OMP_NUM_THREADS=1 vptq-lab compare --model default --bits 2,3,4 --methods gptq,rtn \\
        --out /tmp/lane1.csv --cache benchmarks/results/compare.cache.jsonl
    OMP_NUM_THREADS=1 vptq-lab compare --model default --bits 2,3,4 --methods vq \\
        --out /tmp/lane2.csv --cache benchmarks/results/compare.cache.jsonl
    python benchmarks/compare_table.py     # the remaining rows (none, above), the CSV/markdown and the figures

Writes benchmarks/results/compare.{csv,md} and docs/images/compare_{pareto,bit_budget}.png.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import pandas as pd
import torch
from _bench import markdown_table, with_file_mb

from vptq_lab.core.bits import model_bits
from vptq_lab.core.config import VPTQConfig
from vptq_lab.core.scalar import GPTQConfig, RTNConfig, ScalarBits, scalar_bits
from vptq_lab.lab import plots
from vptq_lab.lab.budget import SMOLLM2_135M_SHAPES
from vptq_lab.lab.compare import CompareSettings, compare
from vptq_lab.lab.results import beyond_presets

RESULTS = Path("benchmarks/results")
IMAGES = Path("docs/images")
NAMES = {"fp": "full precision", "rtn": "RTN", "gptq": "GPTQ", "vq": "plain VQ", "vptq": "VPTQ"}
BASELINE = "baseline: Q4_1 GGUF, already ~4-bit rounded"


def breakdown(method: str, config_json: str):
    """Bit breakdown of the default model's linears under a row's config (same sum as the row's bits)."""
    cfg = json.loads(config_json)
    if method in ("rtn", "gptq"):
        config = (RTNConfig if method == "rtn" else GPTQConfig).from_dict(cfg)
        return sum((scalar_bits(config, shape) for shape in SMOLLM2_135M_SHAPES.values()), ScalarBits())
    return model_bits(VPTQConfig.from_dict(cfg), SMOLLM2_135M_SHAPES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--cache", type=Path, default=RESULTS / "compare.cache.jsonl")
    parser.add_argument(
        "--figures-only", action="store_true", help="redraw the figures from compare.csv and accuracy.csv; no runs"
    )
    args = parser.parse_args()
    if args.figures_only:
        figures(pd.read_csv(RESULTS / "compare.csv"), args.windows)
        return
    settings = CompareSettings(windows=args.windows, seqlen=2048)
    table = compare("default", ["rtn", "gptq", "vq", "vptq"], [2, 3, 4], settings=settings, cache=args.cache)
    table.insert(2, "variant", "preset")
    # GPTQ's usual group of 128 (the presets use 192, which divides 576 and 1536): more bits, at 2 bits.
    g128 = compare(
        "default",
        ["gptq"],
        [2],
        settings=settings,
        cache=args.cache,
        include_fp=False,
        configs={("gptq", 2): GPTQConfig(bits=2, group_size=128)},
    )
    g128.insert(2, "variant", "group 128")
    write(pd.concat([table, g128], ignore_index=True), args.windows)


def write(table: pd.DataFrame, windows: int) -> None:
    table = with_file_mb(table)
    table["machine"] = f"{platform.machine()} CPU, {torch.get_num_threads()} torch thread(s) per run"
    table.to_csv(RESULTS / "compare.csv", index=False)

    table.loc[table.method == "fp", "variant"] = "-"
    shown = table.assign(
        method=[NAMES[m] for m in table.method], row_minutes=((table.quant_seconds + table.eval_seconds) / 60).round(1)
    )
    cols = [
        "method",
        "variant",
        "target_bits",
        "bits",
        "file_mb",
        "perplexity",
        "proxy_loss_rel_mean",
        "quant_seconds",
        "eval_seconds",
        "row_minutes",
        "peak_rss_gib",
    ]
    (RESULTS / "compare.md").write_text(markdown_table(shown[cols]))
    print(shown[cols].to_string(index=False))
    figures(table, windows)


def accuracy_rows() -> pd.DataFrame:
    """benchmarks/accuracy.py's rows beyond the uniform presets (the mixed allocations and the fine-tuned models),
    each named by what its command adds to the preset, for the Pareto figure."""
    path = RESULTS / "accuracy.csv"
    if not path.is_file():
        return pd.DataFrame(columns=["method", "bits", "perplexity"])
    rows = beyond_presets(pd.read_csv(path))
    return pd.DataFrame({"method": rows.method, "bits": rows.bits_per_weight, "perplexity": rows.perplexity})


def figures(table: pd.DataFrame, windows: int) -> None:
    """docs/images/compare_pareto.png (the four methods' presets, with accuracy.csv's mixed and fine-tuned rows)
    and compare_bit_budget.png."""
    table = table.copy()
    table.loc[table.method == "fp", "variant"] = "-"
    labels = [NAMES[m] + ("" if v in ("preset", "-") else f" {v}") for m, v in zip(table.method, table.variant)]
    quant = table.assign(method=labels)[table.method != "fp"][["method", "bits", "perplexity"]]
    quant = pd.concat([quant, accuracy_rows()], ignore_index=True)
    fig = plots.bits_vs_perplexity(
        quant, log_y=True, note=f"SmolLM2-135M, WikiText-2 test, first {windows} x 2048 tokens"
    )
    fp = table[table.method == "fp"]
    if len(fp):
        fig.axes[0].axhline(
            float(fp.perplexity.iloc[0]), color="0.5", linestyle=":", label=f"full precision ({BASELINE})"
        )
        fig.axes[0].legend(fontsize="small", **plots.LEGEND_BESIDE)  # where bits_vs_perplexity puts it
    IMAGES.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMAGES / "compare_pareto.png", dpi=100, bbox_inches="tight")

    bars = {
        f"{name} {r.target_bits}": breakdown(r.method, r.config)
        for name, r in zip(labels, table.itertuples())
        if r.method != "fp"
    }
    for (label, b), bits in zip(bars.items(), table[table.method != "fp"].bits):
        assert abs(b.bits_per_weight - bits) < 1e-3, (label, b.bits_per_weight, bits)  # same accounting as the row
    plots.bit_budget(bars).savefig(IMAGES / "compare_bit_budget.png", dpi=100, bbox_inches="tight")


if __name__ == "__main__":
    main()
