"""Render every workbench plot from the default model into docs/images/ (referenced by the README).

Block 10 of SmolLM2-135M with WikiText-2 validation Hessians (16 x 512 tokens, full-precision
activations) supplies the single-layer plots; the bits-vs-perplexity plot reads
benchmarks/results/vptq_table.csv; the kernel plot is a CPU timing (no GPU has been lent).

    python scripts/make_figures.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from vptq_lab import calibration_windows, load_model, load_wikitext2
from vptq_lab.core.bits import model_bits
from vptq_lab.core.column_trace import column_trace
from vptq_lab.core.config import VPTQConfig, preset
from vptq_lab.core.methods import METHODS, method_preset
from vptq_lab.core.qweight import dequantize
from vptq_lab.kernels import vq_linear
from vptq_lab.kernels.testing import random_qweight
from vptq_lab.lab import plots
from vptq_lab.lab.budget import SMOLLM2_135M_SHAPES
from vptq_lab.model.arch import linear_role
from vptq_lab.model.passes import block_hessians

OUT = Path("docs/images")
BASELINE = "baseline: Q4_1 GGUF, already ~4-bit rounded"


def save(fig, name: str) -> None:
    fig.savefig(OUT / f"{name}.png", dpi=110, bbox_inches="tight")


def layer_figures(W: torch.Tensor, H: torch.Tensor) -> None:
    config = preset(3)  # outliers and a residual: every part shows
    qw = METHODS["vptq"].quantize(W, H, config)
    save(plots.weight_histogram(W, dequantize(qw)), "weight_histogram")
    save(plots.hessian_diagonal(H, outlier_size=qw.outlier_size), "hessian_diagonal")
    outlier_cols = (qw.perm.long() & 0xFFFF)[: qw.outlier_size]
    save(plots.outlier_heatmap(W, H, outlier_cols, saliency=True), "outlier_heatmap")
    save(plots.codebook_usage(qw), "codebook_usage")
    save(plots.vector_projection(W, qw), "vector_projection")
    save(plots.column_error(column_trace(W, H, preset(2))), "column_error")


def role_figure(layers: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> pd.DataFrame:
    rows = []
    for method in ("rtn", "gptq", "vq", "vptq"):
        config = method_preset(method, 2)
        for name, (W, H) in layers.items():
            result = METHODS[method].quantize(W, H, config)
            rows.append(
                {
                    "name": f"model.layers.10.{name}",
                    "block": 10,
                    "role": linear_role(name),
                    "method": method,
                    "proxy_loss_rel": float(result.info["proxy_loss_rel"]),
                    "bits": METHODS[method].bits(config, tuple(W.shape)),
                }
            )
    df = pd.DataFrame(rows)
    save(plots.proxy_loss_by_role(df, log=True), "proxy_loss_by_role")
    return df


def budget_figure() -> None:
    breakdowns = {f"preset {b}": model_bits(preset(b), SMOLLM2_135M_SHAPES) for b in (2, 3, 4)}
    breakdowns["v6 k4096 (paper's 7B config)"] = model_bits(
        VPTQConfig(vector_lens=(-1, 6), num_centroids=(-1, 4096)), SMOLLM2_135M_SHAPES
    )
    save(plots.bit_budget(breakdowns), "bit_budget")


def pareto_figure() -> None:
    path = Path("benchmarks/results/vptq_table.csv")
    if not path.is_file():
        return
    table = pd.read_csv(path)
    fp = table["method"] == "fp"
    table["method"] = [
        "full precision" if is_fp else f"VPTQ, {prop.replace('_', '-')} propagation"
        for is_fp, prop in zip(fp, table["propagation"].fillna(""))
    ]
    table["note"] = ""
    table.loc[fp, "note"] = BASELINE
    save(
        plots.bits_vs_perplexity(table, log_y=True, note="SmolLM2-135M, WikiText-2 test, first 32 x 2048 tokens"),
        "bits_vs_perplexity",
    )


def kernel_figure() -> pd.DataFrame:
    rows = []
    for out_f, in_f in ((576, 576), (1536, 576), (576, 1536)):
        qw = random_qweight(out_f, in_f, v=5, k1=512, group_num=2, perm=True)
        dense = dequantize(qw)
        for batch in (1, 16):
            x = torch.randn(batch, in_f)
            for backend, fn in (
                ("dense F.linear", lambda: F.linear(x, dense)),
                ("vq_linear torch (cached)", lambda: vq_linear(x, qw, backend="torch")),
                ("vq_linear reference", lambda: vq_linear(x, qw, backend="reference")),
            ):
                fn()
                start, n = time.perf_counter(), 20
                for _ in range(n):
                    fn()
                rows.append(
                    {
                        "shape": f"{out_f}x{in_f}",
                        "batch": batch,
                        "backend": backend,
                        "us": (time.perf_counter() - start) / n * 1e6,
                    }
                )
    df = pd.DataFrame(rows)
    fig = plots.kernel_throughput(df, value="us")
    fig.axes[0].set_title("CPU time per call (no GPU lent yet): cached dense path vs reference")
    fig.axes[0].set_yscale("log")
    save(fig, "kernel_throughput_cpu")
    return df


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model, tokenizer = load_model("default")
    calibration = calibration_windows(tokenizer, load_wikitext2("validation"), 16, 512, seed=0)
    layers = block_hessians(model, calibration, 10)  # {linear: (W [out, in], H [in, in])}, every linear of block 10
    layer_figures(*layers["self_attn.q_proj"])
    roles = role_figure(layers)
    budget_figure()
    pareto_figure()
    kernels = kernel_figure()
    summary = {"roles": roles.to_dict(orient="records"), "cpu_kernels": kernels.to_dict(orient="records")}
    Path("benchmarks/results/figures_data.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
