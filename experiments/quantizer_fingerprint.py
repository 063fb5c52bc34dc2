"""Did the quantizer's output change? A sha256 of each block's state after quantizing the default model's first
``--blocks`` blocks with the 2-bit preset (one thread, the preset's calibration windows), for comparing commits.

Quantization is deterministic for a seed, a thread count and a machine, so two commits that print the same hashes
quantize those blocks to the same bytes here; the first block whose hash differs is where a change begins. Run this
script from a worktree of each commit with that worktree's package (``cd WORKTREE && PYTHONPATH=WORKTREE python
/path/to/this/experiments/quantizer_fingerprint.py``: commits older than the script have no copy of it; the record's
commit is the worktree's). Prints one JSON object; ``--out FILE`` also writes it.

    OMP_NUM_THREADS=1 python experiments/quantizer_fingerprint.py --blocks 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
from pathlib import Path

import torch

from vptq_lab import calibration_windows, load_model, load_wikitext2, quantize_
from vptq_lab.core.config import preset
from vptq_lab.lab.results import code_commit


def block_hashes(model) -> list[str]:
    """The first 16 hex digits of a sha256 over each block's state (names and bytes, in name order)."""
    found = []
    for block in model.model.layers:
        digest = hashlib.sha256()
        for name, tensor in sorted(block.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        found.append(digest.hexdigest()[:16])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=3, help="quantize only the first N blocks (default 3)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    if args.blocks < 1:
        parser.error(f"--blocks {args.blocks} must be >= 1")
    torch.set_num_threads(1)
    model, tokenizer = load_model("default")
    model.model.layers = model.model.layers[: args.blocks]
    model.config.num_hidden_layers = len(model.model.layers)
    config = preset(2)
    calib = calibration_windows(tokenizer, load_wikitext2("validation"), config.nsamples, config.seqlen, config.seed)
    quantize_(model, config, calib, progress=False)
    record = {
        "commit": code_commit(),
        "blocks": len(model.model.layers),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "block_sha256_16": block_hashes(model),
    }
    text = json.dumps(record, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
