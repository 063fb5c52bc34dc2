"""Does matching the blocks' hidden states (``DistillConfig.hidden_weight``) help end-to-end distillation? A probe.

From one quantization of the default model (the 4-bit preset unless ``--bits``), each variant runs the first
``--steps`` steps of the 4-bit 240-step recipe (cosine learning rate from 2e-4, kept by held-out KL: the
``vptq4-e2e-cos240-lr2e-4-kl`` row of ``benchmarks/accuracy.py``, the base of ``code_updates.py`` too) with the
KL loss alone or KL plus ``hidden_weight`` times the hidden-state term, and records the held-out KL to the teacher
(the selection figure, never the loss) every 10 steps. The same windows, seed and quantization for every variant.
It also records both terms on the first training window before training, to show their scales.

    OMP_NUM_THREADS=1 python benchmarks/hidden_loss.py --from-checkpoints artifacts/accuracy-checkpoints/vptq4-now

``--from-checkpoints``: block checkpoints of that quantization (``accuracy.py`` leaves them per row); a copy is
used. Without it the preset is quantized here first (into ``artifacts/hidden-loss``, resumable).
Writes ``benchmarks/results/hidden_loss.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from _bench import RESULTS
from code_updates import BASE, run_variant

from vptq_lab import calibration_windows, load_model, load_wikitext2, preset, quantize_
from vptq_lab.io.data import tokenize
from vptq_lab.lab.compare import code_commit
from vptq_lab.model.finetune import DISTILL_WINDOWS, _kl, split_heldout

OUT = RESULTS / "hidden_loss.json"
WORK = Path("artifacts") / "hidden-loss"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=4, choices=[2, 3, 4])
    parser.add_argument("--steps", type=int, default=20, help="steps per variant (a multiple of 10)")
    parser.add_argument("--weights", default="0,1,10", help="comma-separated hidden_weight values (0: KL alone)")
    parser.add_argument("--from-checkpoints", type=Path, default=None, help="block checkpoints of the quantization")
    args = parser.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    commit = code_commit()
    config = preset(args.bits).replace(finetune_batch=1)
    ckpt = WORK / f"quantized-{args.bits}bit"
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
    scales = {}
    with torch.no_grad():
        _kl(student, teacher, train[:1], 1.0, hidden_weight=1.0, parts=scales)
    print("terms on the first training window:", scales, flush=True)
    rows = {}
    for weight in weights:
        name = f"hidden_weight {weight:g}"
        print(f"--- {name}", flush=True)
        rows[name] = run_variant(student, teacher, train, held, {"hidden_weight": weight}, args.steps, BASE)
        print(json.dumps(rows[name]["heldout"]), flush=True)
    record = {
        "commit": commit,
        "bits": args.bits,
        "steps": args.steps,
        "base": BASE.to_dict(),
        "threads": torch.get_num_threads(),
        "quantization_from": str(args.from_checkpoints) if args.from_checkpoints else "quantized here",
        "terms_before_training": {k: round(v, 6) for k, v in scales.items()},
        "variants": rows,
    }
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
