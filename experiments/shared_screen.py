"""Screen codebook scopes on one real block: per-linear codebooks against one codebook shared by the block.

Every linear of block ``--block`` of the default model is quantized with Hessians from full-precision activations
(WikiText-2 validation), and the block's size-weighted mean relative proxy loss is reported beside the bits of the
whole model (codebooks counted once per block for the shared rows). Writes benchmarks/results/shared_screen.csv.

    OMP_NUM_THREADS=1 python experiments/shared_screen.py
"""

from __future__ import annotations

import argparse
import time

import _bench_path  # noqa: F401  (puts benchmarks/ on sys.path, for _bench)
import pandas as pd
from _bench import RESULTS

from vptq_lab import calibration_windows, load_model, load_wikitext2, vptq_quantize
from vptq_lab.core.bits import size_weighted_mean
from vptq_lab.core.config import preset
from vptq_lab.core.quantizer import shared_codebooks
from vptq_lab.lab.budget import SMOLLM2_135M_SHAPES, vptq_model_bits
from vptq_lab.lab.results import code_commit
from vptq_lab.model.passes import block_hessians

# (v, k, groups, scope)
CANDIDATES = [(5, 512, 2, "per-linear"), (5, 512, 2, "per-block"), (6, 2048, 1, "per-block"), (7, 4096, 1, "per-block")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block", type=int, default=10)
    args = parser.parse_args()
    commit = code_commit()
    model, tok = load_model("default")
    calib = calibration_windows(tok, load_wikitext2("validation"), 32, 512, seed=0)
    layers = block_hessians(model, calib, args.block)  # {name: (W, H)}
    rows = []
    for v, k, groups, scope in CANDIDATES:
        config = preset(2).replace(vector_lens=(-1, v), num_centroids=(-1, k), group_num=groups, codebook_scope=scope)
        start = time.perf_counter()
        books = shared_codebooks(list(layers.values()), config) if scope == "per-block" else None
        losses = {
            n: vptq_quantize(W, H, config, codebooks=books).info["proxy_loss_rel"] for n, (W, H) in layers.items()
        }
        rows.append(
            {
                "v": v,
                "k": k,
                "groups": groups,
                "scope": scope,
                "model_bits": round(vptq_model_bits(config, SMOLLM2_135M_SHAPES, scope).bits_per_weight, 4),
                "proxy_loss_rel_mean": round(
                    size_weighted_mean((losses[n], tuple(W.shape)) for n, (W, _) in layers.items()), 6
                ),
                **{f"loss_{n.split('.')[-1]}": round(x, 6) for n, x in losses.items()},
                "seconds": round(time.perf_counter() - start, 1),
                "block": args.block,
                "commit": commit,
            }
        )
        print(rows[-1], flush=True)
    pd.DataFrame(rows).to_csv(RESULTS / "shared_screen.csv", index=False)


if __name__ == "__main__":
    main()
