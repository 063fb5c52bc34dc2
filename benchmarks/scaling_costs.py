"""The measured inputs of docs/scaling.md: what one decoder block of the default model costs at the 2-bit preset.

Quantizes the first ``--blocks`` blocks of the default model (1 process, the threads OMP_NUM_THREADS allows) and
times each part: each linear's steps (prepare, k-means, column loop, packing; from ``QuantizedWeight.info["seconds"]``)
and the whole ``quantize_`` call. Block-input capture and the forward pass to the next block are timed on their own
first, with the same public functions ``quantize_`` calls (``capture_block_inputs``, ``run_block``) on the
full-precision blocks (a quantized block runs as dense matmuls during ``quantize_``, at the same cost). The Hessian
passes are the rest of the call: total minus linears, capture and forwards. Writes
``benchmarks/results/scaling_costs.json``.

    OMP_NUM_THREADS=1 python benchmarks/scaling_costs.py --blocks 4
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import torch
from _bench import RESULTS

from vptq_lab import calibration_windows, load_model, load_wikitext2
from vptq_lab.core.config import preset
from vptq_lab.lab.results import code_commit
from vptq_lab.model import calibrate
from vptq_lab.model.arch import get_blocks


def full_precision_passes(model, calibration) -> tuple[float, float]:
    """Seconds of capturing block 0's inputs from ``calibration`` [n, seqlen], and of every block's forward pass
    (summed), on the full-precision model: the two passes of ``quantize_`` that are not Hessian passes."""
    blocks = get_blocks(model)
    start = time.perf_counter()
    inputs = calibrate.capture_block_inputs(model, blocks[0], calibration)
    capture = time.perf_counter() - start
    start = time.perf_counter()
    for block in blocks:
        inputs = calibrate.run_block(block, inputs)
    return capture, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--beside", default="nothing", help="what else ran on the machine, for the record")
    args = parser.parse_args()
    config = preset(2)
    model, tokenizer = load_model("default")
    model.model.layers = model.model.layers[: args.blocks]
    calib = calibration_windows(tokenizer, load_wikitext2("validation"), config.nsamples, config.seqlen, config.seed)
    capture, forward = full_precision_passes(model, calib)
    start = time.perf_counter()
    report = calibrate.quantize_(model, config, calib, keep=True, progress=False)
    total = time.perf_counter() - start
    per_role: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    shapes = {}
    for name, store in report.store.items():
        role = name.rsplit(".", 1)[-1]
        shapes[role] = list(store.W.shape)
        for step, seconds in store.qweight.info["seconds"].items():
            per_role[role][step] += seconds / args.blocks
    linears = sum(r.seconds for r in report.records)
    result = {
        "commit": code_commit(),
        "threads": torch.get_num_threads(),
        "beside": args.beside,
        "config": "2-bit preset (v5/k512, 2 groups, 10 k-means iterations), 32 x 512 calibration tokens",
        "blocks": args.blocks,
        "seconds_total": round(total, 2),
        "seconds_per_block": round(total / args.blocks, 3),
        "seconds_per_block_linears": round(linears / args.blocks, 3),
        "seconds_per_block_hessian_passes": round((total - linears - capture - forward) / args.blocks, 3),
        "seconds_per_block_forward": round(forward / args.blocks, 3),
        "seconds_capture": round(capture, 3),
        "hessian_passes": "the rest of quantize_'s time: total - linears - capture - forwards",
        "per_linear_seconds": {role: {k: round(v, 3) for k, v in steps.items()} for role, steps in per_role.items()},
        "shapes": shapes,
    }
    (RESULTS / "scaling_costs.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
