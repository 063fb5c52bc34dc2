"""Where each rank's time goes when the 2-bit preset runs on the default model's first N blocks.

Seconds per rank in k-means, the column loop, the nearest-centroid (k-means-only) pass, ``info`` (proxy losses),
``prepare`` (the Cholesky), the block forwards and the collectives (``comm.*``: time spent inside them, which is
mostly waiting for the other ranks), around a ``quantize_`` call:

    OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node 2 benchmarks/stage_profile.py --blocks 5
    OMP_NUM_THREADS=1 python benchmarks/stage_profile.py --blocks 5          # one process

Prints one JSON line per rank. To compare two versions of the code (an A/B), export the other commit's
``vptq_lab`` folder (``git archive COMMIT vptq_lab | tar -x -C /tmp/other``) and run again with
``PYTHONPATH=/tmp/other``. Run-to-run spread on the 2-core machine was about 10% (two runs of one commit, 5 blocks:
97.8 s and 107.4 s), so a difference of a few seconds needs repeated runs.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from _bench import timed_calls

import vptq_lab.core.quantizer as qz
import vptq_lab.model.calibrate as cal
from vptq_lab import calibration_windows, load_model, load_wikitext2, preset, quantize_
from vptq_lab.lab.compare import code_commit
from vptq_lab.model import distributed as dist_mod
from vptq_lab.model.distributed import close_distributed, init_distributed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=5, help="the first N decoder blocks (the rest are dropped)")
    parser.add_argument("--bits", type=int, default=2)
    args = parser.parse_args()
    targets = [
        (qz, "prepare_layer", "prepare"),
        (cal, "prepare_layer", "prepare_for_kmeans"),
        (qz, "column_loop", "column_loop"),
        (qz, "_quantize_columns_once", "nearest_pass"),
        (qz, "_info", "info"),
        (qz, "pack_layer", "pack"),
        (qz, "_fit_codebook", "kmeans"),
        (cal, "_quantize_stage", "stages"),
        (cal, "run_block", "forward"),
        (dist_mod.World, "share", "comm.share"),
        (dist_mod.World, "reduce_hessian", "comm.reduce_hessian"),
    ]
    world = init_distributed("cpu", 600) if "RANK" in os.environ else None
    model, tokenizer = load_model("default")
    model.model.layers = model.model.layers[: args.blocks]
    config = preset(args.bits)
    ids = calibration_windows(tokenizer, load_wikitext2("validation"), config.nsamples, config.seqlen, config.seed)
    spent: dict[str, float] = {}
    with timed_calls(targets, spent):
        start = time.perf_counter()
        quantize_(model, config, ids, progress=False)
        wall = time.perf_counter() - start
    record = {"rank": int(os.environ.get("RANK", 0)), "blocks": args.blocks, "commit": code_commit()}
    record.update({"wall": round(wall, 2), **{k: round(v, 2) for k, v in sorted(spent.items())}})
    print(json.dumps(record), flush=True)
    if world is not None:
        close_distributed()


if __name__ == "__main__":
    main()
