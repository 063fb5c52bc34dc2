"""Do code updates (PV-tuning's discrete step) help end-to-end distillation on the default model? A short probe.

From one quantization of the default model (the 4-bit preset unless ``--bits``), each variant runs the first
``--steps`` steps of the 4-bit 240-step recipe (cosine learning rate from 2e-4, kept by held-out KL: the
``vptq4-e2e-cos240-lr2e-4-kl`` row of ``benchmarks/accuracy.py``) with or without code updates, and records the
held-out KL to the teacher every 10 steps and the fraction of vectors each code update changed. The same windows,
seed and quantization for every variant, so the variants differ only in the code updates.

    OMP_NUM_THREADS=1 python experiments/code_updates.py --from-checkpoints artifacts/accuracy-checkpoints/vptq4-now

``--from-checkpoints``: block checkpoints of that quantization (``accuracy.py`` leaves them per row); a copy is
used. Without it the preset is quantized here first (into ``artifacts/code-updates/quantized``, resumable).
Writes ``benchmarks/results/code_updates.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import time
from pathlib import Path

import _bench_path  # noqa: F401  (puts benchmarks/ on sys.path, for _bench)
import torch
from _bench import RESULTS

from vptq_lab import calibration_windows, load_model, load_wikitext2, quantize_
from vptq_lab.core.config import preset
from vptq_lab.io.data import split_heldout, tokenize
from vptq_lab.lab.recipes import DISTILL_WINDOWS
from vptq_lab.lab.results import code_commit
from vptq_lab.model.distill import DistillConfig, distill_

OUT = RESULTS / "code_updates.json"
WORK = Path("artifacts") / "code-updates"
BASE = DistillConfig(steps=240, schedule="cosine", lr=2e-4, select="kl", eval_every=10, patience=100)
# name -> code-update settings (none: the indices stay fixed, the baseline)
VARIANTS = {
    "fixed codes": {},
    "code_lr 5e-4, every 10, at most 1%": {"code_every": 10, "code_lr": 5e-4, "code_fraction": 0.01},
    "code_lr 1.5e-3, every 10, at most 0.2%": {"code_every": 10, "code_lr": 1.5e-3, "code_fraction": 0.002},
    "code_lr 5e-3, every 10, at most 1%": {"code_every": 10, "code_lr": 5e-3, "code_fraction": 0.01},
}


def run_variant(student0, teacher, train, held, changes: dict, steps: int) -> dict:
    """The first ``steps`` steps of BASE with ``changes``: held-out KL every 10 steps, code changes per update."""
    student = copy.deepcopy(student0)
    config = BASE.replace(**changes)
    history = []

    def evaluate(record: dict) -> bool:
        history.append({k: round(v, 5) for k, v in record.items()})
        return record["step"] >= steps  # the rest of the 240 steps is not run: the probe compares the first ones

    start = time.perf_counter()
    report = distill_(student, teacher, train, held, config, on_evaluate=evaluate)
    return {
        "config": changes,
        "seconds": round(time.perf_counter() - start, 1),
        "heldout": history,
        "code_updates": [{k: round(v, 6) for k, v in u.items() if k != "step"} for u in report.code_updates],
    }


def add_probe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bits", type=int, default=4, choices=[2, 3, 4])
    parser.add_argument("--steps", type=int, default=20, help="steps per variant (a multiple of 10)")
    parser.add_argument("--from-checkpoints", type=Path, default=None, help="block checkpoints of the quantization")


def prepare(args: argparse.Namespace, work: Path) -> tuple:
    """The quantized student (the ``--bits`` preset; from a copy of ``--from-checkpoints`` under ``work``, else
    quantized there, resumable), the teacher, and the training and held-out windows of the CLI's distillation."""
    config = preset(args.bits).replace(finetune_batch=1)
    ckpt = work / f"quantized-{args.bits}bit"
    if args.from_checkpoints is not None and not ckpt.exists():
        if not args.from_checkpoints.is_dir():
            raise SystemExit(f"--from-checkpoints {args.from_checkpoints} is not a folder of block checkpoints")
        shutil.copytree(args.from_checkpoints, ckpt)
    student, tokenizer = load_model("default")
    valid = load_wikitext2("validation")
    calib = calibration_windows(tokenizer, valid, config.nsamples, config.seqlen, config.seed)
    quantize_(student, config, calib, checkpoint_dir=ckpt, resume=ckpt.exists())
    teacher, _ = load_model("default")
    train, held = split_heldout(tokenize(tokenizer, valid), **DISTILL_WINDOWS, seed=config.seed)
    return student, teacher, train, held


def run_probe(args: argparse.Namespace, models: tuple, variants: dict[str, dict], out: Path, **extra) -> None:
    """Every variant (name -> DistillConfig changes to BASE) from the ``prepare``d ``models``; writes ``out``."""
    commit = code_commit()
    student, teacher, train, held = models
    rows = {}
    for name, changes in variants.items():
        print(f"--- {name}", flush=True)
        rows[name] = run_variant(student, teacher, train, held, changes, args.steps)
        print(json.dumps(rows[name]["heldout"]), flush=True)
    record = {
        "commit": commit,
        "bits": args.bits,
        "steps": args.steps,
        "base": BASE.to_dict(),
        "threads": torch.get_num_threads(),
        "quantization_from": str(args.from_checkpoints) if args.from_checkpoints else "quantized here",
        **extra,
        "variants": rows,
    }
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_probe_args(parser)
    args = parser.parse_args()
    run_probe(args, prepare(args, WORK), VARIANTS, OUT)


if __name__ == "__main__":
    main()
