"""Shared helpers of the benchmark scripts (not part of the package)."""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def add_malloc_arg(parser: argparse.ArgumentParser) -> None:
    """``--malloc default|release``; apply it with :func:`apply_malloc` after parsing."""
    parser.add_argument(
        "--malloc",
        choices=["default", "release"],
        default="default",
        help="release: call vptq_lab.release_freed_memory() first (less resident memory, more CPU time)",
    )


def apply_malloc(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Carry out ``--malloc release`` (glibc only: any other C library is refused with the fix)."""
    from vptq_lab.memory import release_freed_memory

    if args.malloc == "release" and not release_freed_memory():
        parser.error("--malloc release needs glibc (Linux); pass --malloc default")


def parse_args(description: str) -> argparse.Namespace:
    """Common flags; exits politely when there is no GPU and no smoke mode was asked for."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--cpu-smoke",
        "--tiny",
        dest="smoke",
        action="store_true",
        help="tiny shapes on CPU (Triton under the interpreter): checks the script works, times nothing useful",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and CSV results")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit(
            f"{Path(sys.argv[0]).name}: no CUDA device here, so there is nothing meaningful to time. "
            "Run it on a GPU machine, or pass --cpu-smoke to check the script on tiny CPU shapes."
        )
    if args.smoke and not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"  # before any Triton kernel module is imported
    return args


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.processor() or 'unknown'})"


def timer(smoke: bool, cuda_graph: bool = False) -> Callable[[Callable[[], object]], float]:
    """A function timing a callable in milliseconds (median)."""
    if not smoke:
        import triton.testing

        if cuda_graph:
            return lambda fn: triton.testing.do_bench_cudagraph(fn, rep=50)
        return lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100)

    def cpu_time(fn: Callable[[], object]) -> float:
        fn()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    return cpu_time


def write_results(out: Path, name: str, smoke: bool, rows: list[dict], meta: dict | None = None) -> Path:
    """Write ``<name>[_cpu-smoke].json`` (meta + rows) and ``.csv`` (rows); returns the JSON path."""
    import triton

    out.mkdir(parents=True, exist_ok=True)
    stem = out / (name + ("_cpu-smoke" if smoke else ""))
    info = {
        "device": device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "smoke": smoke,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **(meta or {}),
    }
    stem.with_suffix(".json").write_text(json.dumps({"meta": info, "rows": rows}, indent=2) + "\n")
    with stem.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return stem.with_suffix(".json")


def markdown_table(df) -> str:
    """A GitHub table of a DataFrame (no tabulate dependency); floats to 4 significant digits."""
    cells = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells]) + "\n"


def random_quantize_(model: Any, config: Any, seed: int = 0) -> Any:
    """Replace every decoder linear of ``model`` (in place) by a QuantizedLinear with random codes in the shapes
    ``config`` gives it: what speed and file-size figures need, since neither depends on the values."""
    from vptq_lab.core.config import layer_plan
    from vptq_lab.kernels.testing import random_qweight
    from vptq_lab.model.arch import arch_for, get_blocks, get_module, linear_weight, set_module
    from vptq_lab.model.layers import QuantizedLinear

    spec = arch_for(model)
    for block in get_blocks(model, spec):
        for name in (n for stage in spec.stages for n in stage):
            linear = get_module(block, name)
            out_f, in_f = linear_weight(linear, spec.transposed).shape
            outliers, groups, _ = layer_plan(config, in_f)
            qw = random_qweight(
                out_f,
                in_f,
                v=config.v,
                k1=config.k1,
                k2=config.k2,
                outlier_size=outliers,
                v0=config.vector_lens[0] if outliers else None,
                k0=config.num_centroids[0] if outliers else None,
                group_num=groups,
                perm=config.enable_perm or outliers > 0,
                norm=config.enable_norm,
                seed=seed,
            )
            set_module(block, name, QuantizedLinear(qw, getattr(linear, "bias", None)))
    return model


def checkpoint_mb(method: str, config_json: str, model_name: str = "default") -> float | None:
    """Size of the model.safetensors that `save_quantized` writes for ``model_name`` quantized by ``method`` with
    this config, in MiB; None for the scalar baselines (no packed format). Exact without quantizing: the size
    depends only on the tensors' shapes and dtypes, so random codes of the official shapes stand in.
    """
    from vptq_lab import VPTQConfig, load_model
    from vptq_lab.io.checkpoint import checkpoint_bytes

    if method not in ("vq", "vptq", "fp"):
        return None
    model, _ = load_model(model_name)
    if method == "fp":  # every tensor in 16 bits, the tied lm_head once
        from safetensors.torch import save

        state = {k: v.half() for k, v in model.state_dict().items() if k != "lm_head.weight"}
        return round(len(save(state, metadata={"format": "pt"})) / 2**20, 2)
    return round(checkpoint_bytes(random_quantize_(model, VPTQConfig.from_json(config_json))) / 2**20, 2)


def with_file_mb(table: Any) -> Any:
    """``table`` (rows of a compare cache) with ``file_mb`` filled where a row predates that column."""
    if "file_mb" not in table:
        table["file_mb"] = float("nan")
    table["file_mb"] = table["file_mb"].astype(float)
    missing = table["file_mb"].isna()
    sizes = {key: checkpoint_mb(*key) for key in set(zip(table.method[missing], table.config[missing]))}
    filled = [sizes[key] for key in zip(table.method[missing], table.config[missing])]
    table.loc[missing, "file_mb"] = [float("nan") if s is None else s for s in filled]
    return table
