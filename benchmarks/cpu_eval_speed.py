"""CPU evaluation speed of a quantized default model against the full-precision one, in one run.

Every decoder linear of SmolLM2-135M is replaced by a QuantizedLinear holding a 2-bit-preset-shaped
VPTQ weight (v5, k512, 2 groups) with random codes: speed does not depend on the values. Both models
evaluate the same WikiText-2 test windows, interleaved window by window so that load drift hits both
equally. The dispatcher dequantizes each weight once and caches it (fp32), so the target is <= 1.1x.

    python benchmarks/cpu_eval_speed.py --windows 4 --out benchmarks/results/cpu_eval_speed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from _bench import random_quantize_

from vptq_lab.core.config import preset
from vptq_lab.io.data import load_wikitext2, tokenize
from vptq_lab.io.models import load_model
from vptq_lab.lab.eval import window_nll


def quantized_copy(seed: int = 0):
    """The default model with random 2-bit-preset-shaped VPTQ weights (v5, k512, 2 groups) in every decoder linear."""
    return random_quantize_(load_model("default")[0], preset(2), seed).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--out", default="benchmarks/results/cpu_eval_speed.json")
    args = parser.parse_args()
    dense, tok = load_model("default")
    quant = quantized_copy()
    ids = tokenize(tok, load_wikitext2("test"))  # [1, n]
    seconds = {"full_precision": 0.0, "quantized": 0.0}
    window_nll(quant, ids[:, : args.seqlen])  # first call dequantizes and caches every weight: not timed
    for i in range(args.windows):
        window = ids[:, i * args.seqlen : (i + 1) * args.seqlen]
        for name, model in (("full_precision", dense), ("quantized", quant)):
            start = time.perf_counter()
            window_nll(model, window)
            seconds[name] += time.perf_counter() - start
    result = {
        "windows": args.windows,
        "seqlen": args.seqlen,
        **{k: round(v, 2) for k, v in seconds.items()},
        "ratio": round(seconds["quantized"] / seconds["full_precision"], 3),
        "target": "<= 1.1",
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads",
        "command": f"python benchmarks/cpu_eval_speed.py --windows {args.windows}",
    }
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
