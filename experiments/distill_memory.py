"""Where end-to-end distillation's memory goes: peak RSS per phase for a few steps on a saved 2-bit model.

Loads a quantized checkpoint (``--student``, for example the folder of ``vptq-lab quantize --bits 2 --out DIR``)
and the default model as the teacher, runs ``--steps`` distillation steps with the recipe's settings (one window
of 512 tokens per step, one held-out evaluation at the start and one at the end), and samples the process's RSS
every 10 ms, phase by phase (``peak_rss``). ``--mode checkpointing`` turns on the student's activation
checkpointing (the transformers flag): it recomputes each block's activations in the backward pass instead of
keeping them. ``--malloc release`` calls ``release_freed_memory()`` first (glibc's mmap threshold fixed at 128 KiB,
so freed tensors go back to the OS); ``default`` leaves glibc's dynamic threshold. ``cpu_seconds`` (the process's CPU
time, page faults included) is the figure to compare speed by when other jobs share the machine.

    OMP_NUM_THREADS=1 python experiments/distill_memory.py --student DIR --mode plain
    OMP_NUM_THREADS=1 python experiments/distill_memory.py --student DIR --mode checkpointing
    OMP_NUM_THREADS=1 python experiments/distill_memory.py --student DIR --mode plain --malloc release
    python experiments/distill_memory.py --student DIR --recipe 2 --label NAME   # the 2-bit recipe's settings

Results go to ``benchmarks/results/distill_memory.json`` (one entry per mode and malloc setting, replaced when
rerun).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import _bench_path  # noqa: F401  (puts benchmarks/ on sys.path, for _bench)
import torch
from _bench import RESULTS, add_malloc_arg, apply_malloc

from vptq_lab import load_model, load_wikitext2
from vptq_lab.io.data import split_heldout, tokenize
from vptq_lab.lab.recipes import DISTILL_RECIPES, DISTILL_WINDOWS
from vptq_lab.lab.results import code_commit, peak_rss
from vptq_lab.model.distill import DistillConfig, distill_

OUT = RESULTS / "distill_memory.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", type=Path, required=True, help="a saved quantized model folder")
    parser.add_argument("--mode", choices=["plain", "checkpointing"], default="plain")
    add_malloc_arg(parser)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--recipe", type=int, choices=(2, 3, 4), default=None, help="a budget whose distillation recipe to use"
    )
    parser.add_argument(
        "--checkpoint", action="store_true", help="commit the run to a temporary checkpoint folder, as the CLI does"
    )
    parser.add_argument("--label", default=None, help="the results entry's name (default: the mode and malloc)")
    args = parser.parse_args()
    if not (args.student / "model.safetensors").is_file():
        parser.error(f"{args.student} holds no model.safetensors: pass a folder written by `vptq-lab quantize`")
    commit = code_commit()
    apply_malloc(parser, args)
    peaks = {}  # phase -> peak RSS (GiB) while it ran
    with peak_rss(0.01) as mem:
        student, tokenizer = load_model(str(args.student))
    peaks["load student"] = mem
    with peak_rss(0.01) as mem:
        teacher, _ = load_model("default")
        train, held = split_heldout(tokenize(tokenizer, load_wikitext2("validation")), **DISTILL_WINDOWS, seed=0)
    peaks["load teacher"] = mem
    if args.mode == "checkpointing":
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    start, cpu = time.perf_counter(), time.process_time()
    with peak_rss(0.01) as mem:
        base = {} if args.recipe is None else DISTILL_RECIPES[args.recipe]
        config = DistillConfig(**{**base, "steps": args.steps, "eval_every": 1000, "patience": 1000})
        with tempfile.TemporaryDirectory() as folder:
            where = folder if args.checkpoint else None
            report = distill_(student, teacher, train, held, config, progress=False, checkpoint_dir=where)
    peaks["distill"] = mem
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    entry = {
        "mode": args.mode,
        "malloc": args.malloc,
        "recipe": args.recipe,
        "checkpoint": args.checkpoint,
        "steps": args.steps,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu, 1),
        "peak_rss_gib": {k: m["peak_gib"] for k, m in peaks.items()},
        "final_heldout": report.final,
        "threads": torch.get_num_threads(),
        "student": str(args.student),
        "commit": commit,
    }
    results = json.loads(OUT.read_text()) if OUT.is_file() else {}
    name = args.label or (args.mode if args.malloc == "default" else f"{args.mode}+{args.malloc}")
    results[name] = entry
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(entry, indent=1))


if __name__ == "__main__":
    main()
