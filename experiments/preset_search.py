"""Choose the 2/3/4-bit presets by measurement: proxy loss on real layers, bits with all overhead.

For each target budget, take `budget.suggest`'s top candidates (plus the current preset), quantize
four real linears of the default model (block 10: q, o, up, down) with Hessians from WikiText-2
validation windows, and rank by mean relative proxy loss. Bits are model totals (paper accounting).

    python experiments/preset_search.py --out benchmarks/results/preset_search.csv
"""

from __future__ import annotations

import argparse
import platform
import time

import pandas as pd
import torch

from vptq_lab.core.bits import model_bits
from vptq_lab.core.config import VPTQConfig, preset
from vptq_lab.core.quantizer import vptq_quantize
from vptq_lab.io.data import calibration_windows, load_wikitext2
from vptq_lab.io.models import load_model
from vptq_lab.lab.budget import SMOLLM2_135M_SHAPES, suggest
from vptq_lab.model import calibrate

LAYERS = ("self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj")


def block_hessians(
    block_index: int, nsamples: int, seqlen: int, layers: tuple[str, ...] = LAYERS
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{linear: (W [out, in], H [in, in])} for ``layers`` of one block, from full-precision activations."""
    model, tok = load_model("default")
    calib = calibration_windows(tok, load_wikitext2("validation"), nsamples, seqlen, seed=0)
    found = calibrate.block_hessians(model, calib, block_index)
    return {name: found[name] for name in layers}


# The fields that decide the codebooks and the bits. The presets also fix calibration (nsamples, seqlen), which
# this search sets itself, so comparing whole configs never matched a preset.
QUANTIZER_FIELDS = (
    "vector_lens",
    "num_centroids",
    "num_res_centroids",
    "npercent",
    "group_num",
    "enable_norm",
    "enable_perm",
)


def is_preset(config: VPTQConfig, target: int) -> bool:
    """Whether ``config`` quantizes as the current ``target``-bit preset does."""
    return all(getattr(config, f) == getattr(preset(target), f) for f in QUANTIZER_FIELDS)


def candidates(target: int, top: int) -> list:
    table = suggest(SMOLLM2_135M_SHAPES, target, max_rows=top)
    configs = list(table["config"])
    if not any(is_preset(c, target) for c in configs):
        configs.append(preset(target))
    return configs


def reflag(path: str) -> pd.DataFrame:
    """Mark the rows of a results file that match today's presets (after a preset change, without rerunning)."""
    table = pd.read_csv(path)
    table["is_current_preset"] = [
        is_preset(VPTQConfig.from_json(c), int(t)) for c, t in zip(table["config"], table["target"])
    ]
    table.to_csv(path, index=False)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="2,3,4")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/preset_search.csv")
    parser.add_argument("--reflag", action="store_true", help="only re-mark --out's rows that match today's presets")
    args = parser.parse_args()
    if args.reflag:
        print(reflag(args.out)[["target", "v", "k1", "k2", "npercent", "group_num", "is_current_preset"]])
        return
    layers = block_hessians(args.block, args.nsamples, args.seqlen)
    rows = []
    for target in map(int, args.targets.split(",")):
        for config in candidates(target, args.top):
            start = time.perf_counter()
            losses = {n: vptq_quantize(W, H, config).info["proxy_loss_rel"] for n, (W, H) in layers.items()}
            rows.append(
                {
                    "target": target,
                    "v": config.v,
                    "k1": config.k1,
                    "k2": config.k2,
                    "npercent": config.npercent,
                    "group_num": config.group_num,
                    "is_current_preset": is_preset(config, target),
                    "bits": round(model_bits(config, SMOLLM2_135M_SHAPES).bits_per_weight, 4),
                    "proxy_loss_rel_mean": round(sum(losses.values()) / len(losses), 6),
                    **{f"loss_{n.split('.')[-1]}": round(v, 6) for n, v in losses.items()},
                    "seconds": round(time.perf_counter() - start, 1),
                    "config": config.to_json(),
                }
            )
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows).sort_values(["target", "proxy_loss_rel_mean"])
    table["machine"] = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    table["calibration"] = f"{args.nsamples}x{args.seqlen} wikitext2 validation, block {args.block}"
    table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
