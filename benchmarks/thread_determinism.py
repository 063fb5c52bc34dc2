"""Where 1 and 2 threads part ways: the first blocks of the default model's 2-bit preset, quantized twice in one
process (``torch.set_num_threads(1)``, then 2), compared stage by stage.

For every linear it records whether H (float64), the codes and the codebooks are bit-identical, and for every block
whether its output hidden states are. The first difference names the cause. Writes
``benchmarks/results/thread_determinism.json``.

    python benchmarks/thread_determinism.py --blocks 3
"""

from __future__ import annotations

import argparse
import json

import torch
from _bench import RESULTS

from vptq_lab import calibration_windows, load_model, load_wikitext2, preset
from vptq_lab.lab.compare import code_commit
from vptq_lab.model import calibrate


def run(threads: int, blocks: int, config, calib) -> dict:
    torch.set_num_threads(threads)
    model, _ = load_model("default")
    model.model.layers = model.model.layers[:blocks]
    hidden = []
    real = calibrate.run_block

    def recording(block, inputs):  # the hidden states each block hands on
        out = real(block, inputs)
        hidden.append([h.clone() for h in calibrate._hidden(out)])
        return out

    calibrate.run_block = recording
    try:
        report = calibrate.quantize_(model, config, calib, keep=True, progress=False)
    finally:
        calibrate.run_block = real
    return {"store": report.store, "hidden": hidden}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=3)
    args = parser.parse_args()
    commit = code_commit()  # the code that runs, read before the long work
    config = preset(2)
    _, tokenizer = load_model("default")
    calib = calibration_windows(tokenizer, load_wikitext2("validation"), config.nsamples, config.seqlen, config.seed)
    one, two = run(1, args.blocks, config, calib), run(2, args.blocks, config, calib)
    layers = []
    for name, a in one["store"].items():
        b = two["store"][name]
        qa, qb = a.qweight.tensors(), b.qweight.tensors()
        layers.append(
            {
                "linear": name,
                "H_identical": torch.equal(a.H, b.H),
                "H_max_rel_diff": float((a.H - b.H).abs().max() / a.H.abs().max()),
                "W_identical": torch.equal(a.W, b.W),
                "tensors_identical": all(torch.equal(qa[k], qb[k]) for k in qa),
                "differing_tensors": sorted(k for k in qa if not torch.equal(qa[k], qb[k])),
            }
        )
    blocks = [
        {"block": i, "hidden_identical": all(torch.equal(x, y) for x, y in zip(ha, hb))}
        for i, (ha, hb) in enumerate(zip(one["hidden"], two["hidden"]))
    ]
    result = {
        "commit": commit,
        "config": f"2-bit preset, first {args.blocks} blocks of the default model",
        "first_linear_with_different_H": next((r["linear"] for r in layers if not r["H_identical"]), None),
        "first_linear_with_different_tensors": next((r["linear"] for r in layers if not r["tensors_identical"]), None),
        "first_block_with_different_hidden": next((b["block"] for b in blocks if not b["hidden_identical"]), None),
        "layers": layers,
        "blocks": blocks,
    }
    (RESULTS / "thread_determinism.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("layers",)}, indent=1))
    for r in layers:
        print(
            r["linear"], r["H_identical"], f"{r['H_max_rel_diff']:.2e}", r["tensors_identical"], r["differing_tensors"]
        )


if __name__ == "__main__":
    main()
