"""What 16-bit storage of the non-quantized tensors costs: size and perplexity of one quantized model, saved twice.

`save_quantized` stores embeddings, norms and biases in 16 bits by default, as official VPTQ checkpoints do. The
default model's weights come from a GGUF dequantized in fp32, so they are not all 16-bit exact. This script takes a
checkpoint folder saved with ``dtype=torch.float32`` (or any folder: it is reloaded, then saved both ways), and
evaluates both copies on the same WikiText-2 test windows.

    python experiments/storage_dtype.py --model artifacts/demo-2bit --windows 8
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import _bench_path  # noqa: F401  (puts benchmarks/ on sys.path, for _bench)
import torch
from _bench import RESULTS

from vptq_lab import load_model, perplexity, save_quantized
from vptq_lab.lab.results import code_commit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a quantized checkpoint folder")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS / "storage_dtype.json")
    args = parser.parse_args()
    model, tokenizer = load_model(args.model)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in (torch.float32, torch.float16):
            folder = save_quantized(model, tokenizer, Path(tmp) / str(dtype), dtype=dtype)
            reloaded, tok = load_model(str(folder))
            start = time.perf_counter()
            rec = perplexity(reloaded, tok, max_windows=args.windows, progress=False)
            rows[str(dtype).removeprefix("torch.")] = {
                "file_mb": round((folder / "model.safetensors").stat().st_size / 2**20, 2),
                "perplexity": rec.perplexity,
                "windows": rec.windows,
                "dataset": rec.dataset,
                "comparable": rec.comparable,
                "eval_seconds": round(time.perf_counter() - start, 1),
            }
            print(dtype, rows[str(dtype).removeprefix("torch.")], flush=True)
    result = {"model": args.model, "commit": code_commit(), "threads": torch.get_num_threads(), "rows": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
