"""Peak RSS of a budget's whole recipe, as `vptq-lab quantize --finetune e2e` runs it, with fewer distillation steps.

Quantizes the default model by the budget's recipe (:func:`vptq_lab.run_recipe` without fine-tuning), then distils it
in the same process by the budget's end-to-end recipe (:func:`vptq_lab.lab.recipes.distill_from`, committing to a
temporary checkpoint folder as ``benchmarks/accuracy.py`` does): the two steps that ``run_recipe`` takes for
``--finetune e2e``, with ``--steps`` steps and a held-out evaluation every ``--eval-every``. It samples the
process's RSS every 10 ms, phase by phase: the quantization, what the process holds when distillation starts, and
the distillation. Compare two versions of the code by running it under each (``PYTHONPATH=<a checkout>``); peak
memory does not depend on what else runs on the machine.

    python experiments/recipe_memory.py --bits 2 --allocate --steps 10 --eval-every 5 --label NAME

Results go to ``benchmarks/results/recipe_memory.json`` (one entry per label, replaced when rerun).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import _bench_path  # noqa: F401  (puts benchmarks/ on sys.path, for _bench)
import psutil
import torch
from _bench import RESULTS

from vptq_lab.lab.recipes import distill_from, recipe, run_recipe
from vptq_lab.lab.results import code_commit, peak_rss

OUT = RESULTS / "recipe_memory.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, choices=(2, 3, 4), default=2)
    parser.add_argument("--allocate", action="store_true")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--label", required=True, help="the results entry's name")
    args = parser.parse_args()
    commit = code_commit()
    tuned = recipe(args.bits, finetune="e2e", allocate=args.allocate, steps=args.steps, eval_every=args.eval_every)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder, peak_rss(0.01) as whole:
        with peak_rss(0.01) as quantize:
            plain = recipe(args.bits, finetune="none", allocate=args.allocate)
            run = run_recipe(plain, progress=False, checkpoint_dir=Path(folder) / "blocks")
        between = psutil.Process().memory_info().rss / 2**30
        with peak_rss(0.01) as distill:
            where = Path(folder) / "distill"
            distill_from(run.model, run.tokenizer, "default", tuned.distill, progress=False, checkpoint_dir=where)
    entry = {
        "bits": args.bits,
        "allocate": args.allocate,
        "steps": args.steps,
        "eval_every": args.eval_every,
        "peak_rss_gib": {
            "quantize": quantize["peak_gib"],
            "when distillation starts": round(between, 3),
            "distill": distill["peak_gib"],
            "whole run": whole["peak_gib"],
        },
        "seconds": round(time.perf_counter() - start, 1),
        "threads": torch.get_num_threads(),
        "commit": commit,
    }
    results = json.loads(OUT.read_text()) if OUT.is_file() else {}
    results[args.label] = entry
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(entry, indent=1))


if __name__ == "__main__":
    main()
