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

import torch

RESULTS = Path(__file__).resolve().parent / "results"


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
