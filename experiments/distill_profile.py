"""Where an end-to-end distillation step's time goes: a few steps of a saved model's recipe under torch.profiler.

Loads a quantized checkpoint (``--student``, a folder of ``vptq-lab quantize``) and the default model as the
teacher, then runs steps of the budget's distillation recipe (``--recipe``; one window of 512 tokens a step) with
one held-out window, so the two held-out evaluations (start and end) cost little. A one-step run warms up first; a
run of 1 + ``--steps`` steps then gives the seconds per step (the difference) without the profiler; a run of
``--steps`` steps under the profiler gives the operators with the most self CPU time, summed into groups (matrix
products, the dequantization's gathers and their backward, the optimizer, the rest).

    python experiments/distill_profile.py --student DIR --recipe 2 --label 2-bit-mixed

Results go to ``benchmarks/results/distill_profile.json`` (one entry per ``--label``, replaced when rerun).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import _bench_path  # noqa: F401  (puts benchmarks/ on sys.path, for _bench)
import torch
from _bench import RESULTS
from torch.profiler import ProfilerActivity, profile

from vptq_lab import load_model, load_wikitext2
from vptq_lab.io.data import split_heldout, tokenize
from vptq_lab.lab.recipes import DISTILL_RECIPES, DISTILL_WINDOWS
from vptq_lab.lab.results import code_commit
from vptq_lab.model.distill import DistillConfig, distill_

OUT = RESULTS / "distill_profile.json"

# operator name -> group; the first pattern that the name contains wins
GROUPS = (
    ("matrix products", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "sdpa", "attention")),
    ("dequantize: gather", ("aten::gather",)),
    ("dequantize backward: scatter", ("scatter", "index_add", "index_put")),
    ("integer casts and copies", ("aten::copy_", "aten::to", "aten::_to_copy", "aten::clone", "aten::contiguous")),
    ("optimizer (Adam)", ("_foreach", "adam", "aten::lerp", "aten::addcmul", "aten::addcdiv", "aten::sqrt")),
    ("softmax and KL", ("softmax", "kl_div", "aten::exp", "aten::log")),
)


def _group(name: str) -> str:
    low = name.lower()
    return next((g for g, keys in GROUPS if any(k in low for k in keys)), "other")


def _run(student, teacher, train, held, config) -> float:
    start = time.perf_counter()
    distill_(student, teacher, train, held, config, progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", type=Path, required=True, help="a saved quantized model folder")
    parser.add_argument("--recipe", type=int, choices=(2, 3, 4), default=2, help="whose distillation recipe to run")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (after one warm-up step)")
    parser.add_argument("--top", type=int, default=25, help="operators to list")
    parser.add_argument("--label", default=None, help="the results entry's name (default: the student's folder)")
    args = parser.parse_args()
    if not (args.student / "model.safetensors").is_file():
        parser.error(f"{args.student} holds no model.safetensors: pass a folder written by `vptq-lab quantize`")
    if args.steps < 1:
        parser.error(f"--steps {args.steps}: profile at least one step")
    commit = code_commit()
    student, tokenizer = load_model(str(args.student))
    teacher, _ = load_model("default")
    train, held = split_heldout(tokenize(tokenizer, load_wikitext2("validation")), **DISTILL_WINDOWS, seed=0)
    held = held[:1]
    base = {**DISTILL_RECIPES[args.recipe], "eval_every": 10_000, "patience": 10_000}
    # one step (the warm-up; with the two evaluations), then 1 + --steps steps: the difference is --steps steps
    # alone. Each run starts from the student as the last left it: a step's cost does not depend on the values.
    one = _run(student, teacher, train, held, DistillConfig(**{**base, "steps": 1}))
    more = _run(student, teacher, train, held, DistillConfig(**{**base, "steps": 1 + args.steps}))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _run(student, teacher, train, held, DistillConfig(**{**base, "steps": args.steps}))
    ops = [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages()]
    total = sum(s for _, s, _ in ops)
    groups: dict[str, float] = defaultdict(float)
    for name, seconds, _ in ops:
        groups[_group(name)] += seconds
    top = sorted(ops, key=lambda o: -o[1])[: args.top]
    entry = {
        "student": str(args.student),
        "recipe": args.recipe,
        "steps": args.steps,
        "seconds_per_step": round((more - one) / args.steps, 2),
        "one_step_run_seconds": round(one, 2),
        "profiled_self_cpu_seconds": round(total, 2),
        "groups": {g: {"seconds": round(s, 2), "share": round(s / total, 3)} for g, s in sorted(groups.items())},
        "top_operators": [{"op": n, "self_cpu_seconds": round(s, 3), "calls": c} for n, s, c in top],
        "threads": torch.get_num_threads(),
        "commit": commit,
    }
    results = json.loads(OUT.read_text()) if OUT.is_file() else {}
    results[args.label or args.student.name] = entry
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(entry, indent=1))


if __name__ == "__main__":
    main()
