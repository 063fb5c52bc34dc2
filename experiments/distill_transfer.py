"""Does what distillation gains on its validation windows carry over to the test windows the accuracy table uses?

Two questions, from one quantization of the default model (the 4-bit preset unless ``--bits``; block checkpoints
from ``--from-checkpoints``, as in ``code_updates.py``), distilled with the budget's recipe (``recipe(bits).distill``,
``--steps`` of it) on the CLI's 512-token validation windows:

- **Context length.** Training windows hold 512 tokens, test windows 2048. The student's KL to the teacher and the
  cross-entropy gap to the teacher on the first ``--windows`` WikiText-2 *test* windows are split by position
  (0-511, 512-1023, 1024-2047), before and after distillation.
- **Text.** At every held-out evaluation (``eval_every`` steps) the same test figures are taken beside the
  held-out KL the run selects on, so the two curves can be compared: does test KL keep falling with held-out KL,
  and does the test cross-entropy follow the KL?

``--average-last N``: the trainable tensors are also snapshot at every evaluation, and after the run the mean of
the last N snapshots (a stochastic weight average) is stored in the student and measured the same way, beside the
kept state, on the test windows and the held-out windows.

A diagnosis on test text: the run selects on held-out validation windows as always, and no recipe is chosen from
these figures.

    python experiments/distill_transfer.py --from-checkpoints artifacts/accuracy-checkpoints/vptq4-now --steps 80

Writes ``benchmarks/results/distill_transfer_<bits>bit_<steps>steps.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import _bench_path  # noqa: F401  (puts benchmarks/ on sys.path, for _bench)
import torch
from _bench import RESULTS
from code_updates import prepare

from vptq_lab import load_model, load_wikitext2
from vptq_lab.io.data import tokenize
from vptq_lab.lab.recipes import recipe
from vptq_lab.lab.results import code_commit
from vptq_lab.model.distill import distill_, distill_loss, end_training, trainable_parameters
from vptq_lab.model.layers import QuantizedLinear
from vptq_lab.model.logprobs import position_terms

BUCKETS = ((0, 512), (512, 1024), (1024, 2048))
SEQLEN = 2048


def position_metrics(student, teacher, windows: torch.Tensor) -> list:
    """Per bucket of predicting positions: mean KL(teacher || student), the student's cross-entropy of the next
    token and the teacher's, over ``windows`` [n, SEQLEN]; the last entry is over all positions."""
    sums = torch.zeros(len(BUCKETS), 3, dtype=torch.float64)  # kl, student ce, teacher ce
    counts = torch.zeros(len(BUCKETS), dtype=torch.float64)
    was_training = student.training
    student.eval()
    for w in windows:
        t = position_terms(student, teacher, w)
        terms = torch.stack([t["kl"][:-1], t["nll"], t["teacher_nll"]], -1)  # [SEQLEN - 1, 3]: position p predicts p+1
        pos = torch.arange(SEQLEN - 1)
        for b, (a, z) in enumerate(BUCKETS):
            inside = (pos >= a) & (pos < z)
            sums[b] += terms[inside].sum(0)
            counts[b] += inside.sum()
    student.train(was_training)
    rows = [(f"{a}-{z - 1}", sums[b] / counts[b]) for b, (a, z) in enumerate(BUCKETS)]
    rows.append(("all", sums.sum(0) / counts.sum()))
    return [
        {"positions": name, "kl": round(float(kl), 5), "ce_gap": round(float(ce - ce_t), 5), "ce": round(float(ce), 5)}
        for name, (kl, ce, ce_t) in rows
    ]


def trainable_state(student) -> dict[str, torch.Tensor]:
    """A copy of the tensors a distillation run is training now, under :func:`trainable_parameters`' names."""
    state = {
        f"{name}.{key}": p.detach().clone()
        for name, module in student.named_modules()
        if isinstance(module, QuantizedLinear)
        for key, p in module.trainable.items()
    }
    state.update({n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad})
    return state


@torch.no_grad()
def store_average(student, snapshots: list[dict[str, torch.Tensor]], train_head: bool) -> None:
    """Store the mean of ``snapshots`` in the (finished) student, as the end of a run stores its kept state."""
    params = trainable_parameters(student, train_norms=True, train_head=train_head)
    if set(params) != set(snapshots[0]):
        raise RuntimeError("the snapshots' tensors are not the ones trainable_parameters() returns")
    for name, param in params.items():
        param.copy_(torch.stack([s[name] for s in snapshots]).mean(0))
    end_training(student)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=4, choices=[2, 3, 4])
    parser.add_argument("--steps", type=int, default=80, help="steps of the budget's distillation recipe")
    parser.add_argument("--windows", type=int, default=4, help="test windows of 2048 tokens")
    parser.add_argument("--average-last", type=int, default=0, help="also measure the mean of the last N snapshots")
    parser.add_argument("--from-checkpoints", type=Path, default=None, help="block checkpoints of the quantization")
    args = parser.parse_args()
    commit = code_commit()
    student, teacher, train, held = prepare(args, Path("artifacts") / "distill-transfer")
    _, tokenizer = load_model("default")  # prepare() returns the models only
    test = tokenize(tokenizer, load_wikitext2("test"))[0]
    windows = test[: args.windows * SEQLEN].reshape(args.windows, SEQLEN)
    start = time.perf_counter()
    before = position_metrics(student, teacher, windows)
    print(json.dumps(before), flush=True)
    curve, snapshots = [], []

    def track(record: dict) -> bool:
        if args.average_last:
            snapshots.append(trainable_state(student))
            del snapshots[: -args.average_last]
        test_all = position_metrics(student, teacher, windows)[-1]
        figures = {"test_kl": test_all["kl"], "test_ce_gap": test_all["ce_gap"]}
        curve.append({**{k: round(v, 5) for k, v in record.items()}, **figures})
        print(json.dumps(curve[-1]), flush=True)
        return False

    config = recipe(args.bits, finetune="e2e", steps=args.steps).distill
    report = distill_(student, teacher, train, held, config, on_evaluate=track)
    after = position_metrics(student, teacher, windows)  # the kept state
    print(json.dumps(after), flush=True)
    averaged = None
    if args.average_last:
        kept_heldout = distill_loss(student, teacher, held)["kl"]
        store_average(student, snapshots, config.train_head)
        averaged = {
            "snapshots": [r["step"] for r in curve[-len(snapshots) :]],
            "kept_heldout_kl": round(kept_heldout, 5),
            "heldout_kl": round(distill_loss(student, teacher, held)["kl"], 5),
            "test": position_metrics(student, teacher, windows),
        }
        print(json.dumps(averaged), flush=True)
    record = {
        "commit": commit,
        "bits": args.bits,
        "quantization_from": str(args.from_checkpoints) if args.from_checkpoints else "quantized here",
        "distill": config.to_dict(),
        "heldout_initial": report.initial,
        "kept": report.best,
        "test_windows": args.windows,
        "threads": torch.get_num_threads(),
        "before": before,
        "curve": curve,
        "after": after,
        "averaged": averaged,
        "seconds": round(time.perf_counter() - start, 1),
    }
    suffix = f"_avg{args.average_last}" if args.average_last else ""
    out = RESULTS / f"distill_transfer_{args.bits}bit_{args.steps}steps{suffix}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
