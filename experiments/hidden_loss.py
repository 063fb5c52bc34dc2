"""Does matching the blocks' hidden states (``DistillConfig.hidden_weight``) help end-to-end distillation? A probe.

From one quantization of the default model (the 4-bit preset unless ``--bits``), each variant runs the first
``--steps`` steps of the 4-bit 240-step recipe (cosine learning rate from 2e-4, kept by held-out KL: the
``vptq4-e2e-cos240-lr2e-4-kl`` row of ``benchmarks/accuracy.py``, the base of ``code_updates.py`` too) with the
KL loss alone or KL plus ``hidden_weight`` times the hidden-state term, and records the held-out KL to the teacher
(the selection figure, never the loss) every 10 steps. The same windows, seed and quantization for every variant.
It also records both terms on the first training window before training, to show their scales.

    OMP_NUM_THREADS=1 python experiments/hidden_loss.py --from-checkpoints artifacts/accuracy-checkpoints/vptq4-now

``--from-checkpoints``: block checkpoints of that quantization (``accuracy.py`` leaves them per row); a copy is
used. Without it the preset is quantized here first (into ``artifacts/hidden-loss``, resumable:
``code_updates.prepare``).
Writes ``benchmarks/results/hidden_loss.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import _bench_path  # noqa: F401  (puts benchmarks/ on sys.path, for _bench)
from _bench import RESULTS
from code_updates import add_probe_args, prepare, run_probe

from vptq_lab.model.distill import distill_loss

OUT = RESULTS / "hidden_loss.json"
WORK = Path("artifacts") / "hidden-loss"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_probe_args(parser)
    parser.add_argument("--weights", default="0,1,10", help="comma-separated hidden_weight values (0: KL alone)")
    args = parser.parse_args()
    models = prepare(args, WORK)
    scales = distill_loss(models[0], models[1], models[2][:1], hidden_weight=1.0)
    del scales["loss"]  # the two terms, each at weight 1
    print("terms on the first training window:", scales, flush=True)
    variants = {f"hidden_weight {float(w):g}": {"hidden_weight": float(w)} for w in args.weights.split(",")}
    run_probe(args, models, variants, OUT, terms_before_training={k: round(v, 6) for k, v in scales.items()})


if __name__ == "__main__":
    main()
