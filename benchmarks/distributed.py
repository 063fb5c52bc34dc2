"""Wall time of the default model's 2-bit preset: 1 process x 1 thread, 1 process x 2 threads, and
``torchrun --nproc-per-node 2`` with 1 thread per process; whether the saved files are identical.

Each run is the real CLI (``vptq-lab quantize --bits 2``), timed from launch to exit (model load and save
included) and by its own quantization clock (``seconds``: calibration and the block loop). Runs are cached in
``benchmarks/results/distributed.cache.jsonl`` by the commit that ran them, so an interrupted benchmark resumes.
The saved folders stay in ``artifacts/distributed-bench/`` (replaced on each run), so the files can be compared
tensor by tensor. Writes ``distributed.json`` and ``distributed.md``. Nothing else should run on the machine
meanwhile.

    python benchmarks/distributed.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _bench import RESULTS, markdown_table

from vptq_lab.io.checkpoint import compare_checkpoints
from vptq_lab.lab.results import code_commit

CACHE = RESULTS / "distributed.cache.jsonl"
RUNS = {  # name -> (processes, threads per process)
    "1 process x 1 thread": (1, 1),
    "1 process x 2 threads": (1, 2),
    "torchrun 2 processes x 1 thread": (2, 1),
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(name: str, workdir: Path, bits: int) -> dict:
    procs, threads = RUNS[name]
    out = workdir / name.replace(" ", "_")
    if out.exists():  # a folder this script wrote on an earlier run (its name is ours): start clean
        import shutil

        shutil.rmtree(out)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs)]
    cmd = (launch if procs > 1 else [sys.executable]) + ["-m", "vptq_lab.cli", "quantize", "--bits", str(bits)]
    cmd += ["--out", str(out), "--json", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "run": name,
        "processes": procs,
        "threads_per_process": threads,
        "wall_seconds": round(wall, 1),
        "quantize_seconds": record["seconds"],
        "bits_per_weight": record["bits_per_weight"],
        "model_sha256": _sha256(out / "model.safetensors"),
        "commit": code_commit(),
        "command": f"OMP_NUM_THREADS={threads} " + " ".join(["python" if c == sys.executable else c for c in cmd]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--beside", default="nothing", help="what else ran on the machine, for the record")
    args = parser.parse_args()
    commit = code_commit()
    done = {}
    if CACHE.exists():
        for line in CACHE.read_text().splitlines():
            row = json.loads(line)
            if row["commit"] == commit and row.get("bits") == args.bits:
                done[row["run"]] = row
    workdir = Path(__file__).resolve().parents[1] / "artifacts" / "distributed-bench"
    workdir.mkdir(parents=True, exist_ok=True)
    for name in RUNS:
        if name in done:
            continue
        row = {**run(name, workdir, args.bits), "bits": args.bits, "beside": args.beside}
        with CACHE.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        done[name] = row
        print(json.dumps(row), flush=True)
    base, two_threads = done["1 process x 1 thread"], done["1 process x 2 threads"]
    rows = []
    for name in RUNS:
        r = done[name]
        rows.append(
            {
                "run": name,
                "wall_s": r["wall_seconds"],
                "quantize_s": r["quantize_seconds"],
                "speedup_vs_1x1": round(base["quantize_seconds"] / r["quantize_seconds"], 2),
                "same_file_as_1x1": r["model_sha256"] == base["model_sha256"],
                "commit": r["commit"][:12],
            }
        )
    torchrun = done["torchrun 2 processes x 1 thread"]
    differing = {}
    for name in RUNS:
        a, b = workdir / "1_process_x_1_thread", workdir / name.replace(" ", "_")
        if a.exists() and b.exists():
            diff = compare_checkpoints(a, b)
            differing[name] = {"identical": diff["identical"], "differing_tensors": diff["differing"]}
    summary = {
        "commit": commit,
        "compared_with_1x1": differing,
        "bits": args.bits,
        "beside": args.beside,
        "rows": rows,
        "target_speedup_1_6x_met": torchrun["quantize_seconds"] * 1.6 <= base["quantize_seconds"],
        "no_slower_than_1x2": torchrun["quantize_seconds"] <= two_threads["quantize_seconds"],
        "commands": {name: done[name]["command"] for name in RUNS},
    }
    (RESULTS / "distributed.json").write_text(json.dumps(summary, indent=1) + "\n")
    (RESULTS / "distributed.md").write_text(markdown_table(__import__("pandas").DataFrame(rows)))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
