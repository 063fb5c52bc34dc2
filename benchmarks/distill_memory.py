"""Where end-to-end distillation's memory goes: peak RSS per phase for a few steps on a saved 2-bit model.

Loads a quantized checkpoint (``--student``, for example the folder of ``vptq-lab quantize --bits 2 --out DIR``)
and the default model as the teacher, runs ``--steps`` distillation steps with the recipe's settings (one window
of 512 tokens per step, one held-out evaluation at the start and one at the end), and samples the process's RSS
every 10 ms, phase by phase. ``--mode checkpointing`` turns on the student's activation checkpointing (the
transformers flag): it recomputes each block's activations in the backward pass instead of keeping them.

    OMP_NUM_THREADS=1 python benchmarks/distill_memory.py --student DIR --mode plain
    OMP_NUM_THREADS=1 python benchmarks/distill_memory.py --student DIR --mode checkpointing

Results go to ``benchmarks/results/distill_memory.json`` (one entry per mode, replaced when rerun).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import psutil
import torch
from _bench import RESULTS

from vptq_lab import load_model, load_wikitext2
from vptq_lab.io.data import tokenize
from vptq_lab.lab.compare import code_commit
from vptq_lab.model.finetune import DISTILL_WINDOWS, DistillConfig, distill_, split_heldout

OUT = RESULTS / "distill_memory.json"


class _Sampler:
    """Peak RSS (GiB) of this process per named phase."""

    def __init__(self) -> None:
        self.phase, self.peaks, self._proc = "start", {}, psutil.Process()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            rss = self._proc.memory_info().rss / 2**30
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)
            time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", type=Path, required=True, help="a saved quantized model folder")
    parser.add_argument("--mode", choices=["plain", "checkpointing"], default="plain")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if not (args.student / "model.safetensors").is_file():
        parser.error(f"{args.student} holds no model.safetensors: pass a folder written by `vptq-lab quantize`")
    commit = code_commit()
    mem = _Sampler()
    mem.phase = "load student"
    student, tokenizer = load_model(str(args.student))
    mem.phase = "load teacher"
    teacher, _ = load_model("default")
    train, held = split_heldout(tokenize(tokenizer, load_wikitext2("validation")), **DISTILL_WINDOWS, seed=0)
    if args.mode == "checkpointing":
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mem.phase = "distill"
    start = time.perf_counter()
    report = distill_(student, teacher, train, held, DistillConfig(steps=args.steps, eval_every=1000), progress=False)
    seconds = time.perf_counter() - start
    time.sleep(0.05)
    entry = {
        "mode": args.mode,
        "steps": args.steps,
        "seconds": round(seconds, 1),
        "peak_rss_gib": {k: round(v, 3) for k, v in mem.peaks.items()},
        "final_heldout": report.final,
        "threads": torch.get_num_threads(),
        "student": str(args.student),
        "commit": commit,
    }
    results = json.loads(OUT.read_text()) if OUT.is_file() else {}
    results[args.mode] = entry
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(entry, indent=1))


if __name__ == "__main__":
    main()
